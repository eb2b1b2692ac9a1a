"""What an ACK's ERR-8 and the review queue say about a patient's candidates (§4).

An interface analyst reads them: each candidate by its field and system, its value masked.
"""

from __future__ import annotations

from rems_core.identity import Candidate, mask

KEPT = "Kept for review."


def unmatched_text(candidates: list[Candidate], sender_key: str) -> str:
    """The candidates tried, and what setting would resolve those that resolved to nothing."""
    if not candidates:
        return f"PID-3 carries no identifier. {KEPT}"
    tried = [_named(c) for c in candidates if c.system]
    bare = [f"{c.field} ({mask(c.value)})" for c in candidates if not c.system and not c.namespace]
    unmapped = [
        f"{c.field} ({c.namespace} {mask(c.value)})"
        for c in candidates
        if not c.system and c.namespace
    ]
    clauses = []
    if tried:
        clauses.append(f"No registry patient has {_listed(tried, 'or')}")
    if bare:
        clauses.append(
            f"{_listed(bare, 'and')} {_has(bare)} no assigning authority: default_authority"
            f" in the senders file for {sender_key} would resolve {_it(bare)}"
        )
    if unmapped:
        clauses.append(
            f"{_listed(unmapped, 'and')} {_has(unmapped)} an unmapped namespace"
            f" (namespace_as_system is false for {sender_key}): an assigning_authorities entry"
            f" would resolve {_it(unmapped)}"
        )
    return f"{'; '.join(clauses)}. {KEPT}"


def ambiguous_text(candidates: list[Candidate], patients: int) -> str:
    """Candidates that name different registry patients: why nothing was filed."""
    named = [_named(c) for c in candidates]
    return (
        f"{_listed(named, 'and')} name {patients} different registry patients:"
        f" nothing was filed. {KEPT}"
    )


def _named(candidate: Candidate) -> str:
    return f"{candidate.field} {candidate.system}|{mask(candidate.value)}"


def _listed(items: list[str], conjunction: str) -> str:
    if len(items) <= 2:
        return f" {conjunction} ".join(items)
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def _has(items: list[str]) -> str:
    return "has" if len(items) == 1 else "have"


def _it(items: list[str]) -> str:
    return "it" if len(items) == 1 else "them"
