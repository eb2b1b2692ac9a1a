"""Who a result is about (docs/contracts.md §4, §5): identifier candidates as a sender wrote them,
and how they are shown to people without showing them whole.

A candidate is one identifier a message or resource offers for its patient: the value, the field
it came from, and the system it resolved to by which rule, or none (a bare value that no setting
resolves). Matching is on system and value only, never on name or birth date.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from rems_core.model import Identifier

#: A FHIR reference stands for its patient the way an identifier does: held results of
#: `Patient/{id}` are filed when that Patient is linked (docs/contracts.md §5).
REFERENCE_SYSTEM = "urn:rems-gateway:reference"


class Rule(StrEnum):
    """How a candidate's system was found (docs/contracts.md §4, (a)–(d))."""

    OID = "oid"  # (a) CX-4.2 with CX-4.3 ISO
    MAPPED = "mapped"  # (b) the sender's assigning_authorities
    NAMESPACE = "namespace"  # (c) the CX-4.1 namespace text itself
    DEFAULT_AUTHORITY = "default_authority"  # (d) a bare value, the sender's default_authority
    UNRESOLVED = "unresolved"  # a bare value (or a switched-off namespace) nothing resolves
    FHIR = "fhir"  # a FHIR Identifier's system, as sent
    REFERENCE = "reference"  # a FHIR literal reference, `Patient/{id}`


@dataclass(frozen=True)
class Candidate:
    value: str
    field: str  # where it was read: "PID-3[1]", "PID-2", "PID-4[2]", "MRG-1[1]", "subject"
    rule: Rule
    system: str = ""  # "" when unresolved
    namespace: str = ""  # CX-4.1 (or CX-4.2) as written, for the review queue

    @property
    def identifier(self) -> Identifier | None:
        """The identifier it is matched by; None for an unresolved one."""
        return Identifier(self.system, self.value) if self.system else None

    def as_dict(self) -> dict[str, str]:
        return {
            "value": self.value,
            "field": self.field,
            "rule": self.rule.value,
            "system": self.system,
            "namespace": self.namespace,
        }

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> Candidate:
        return cls(
            value=data["value"],
            field=data.get("field", ""),
            rule=Rule(data.get("rule", Rule.FHIR.value)),
            system=data.get("system", ""),
            namespace=data.get("namespace", ""),
        )


def resolved(candidates: list[Candidate]) -> list[Identifier]:
    """The identifiers of the candidates that resolved, in their order, each once."""
    seen: list[Identifier] = []
    for candidate in candidates:
        identifier = candidate.identifier
        if identifier is not None and identifier not in seen:
            seen.append(identifier)
    return seen


def of_identifiers(identifiers: list[Identifier], field: str = "subject") -> list[Candidate]:
    """Candidates for identifiers given with their systems (FHIR, scenario files)."""
    return [Candidate(i.value, field, Rule.FHIR, i.system) for i in identifiers]


def reference(resource_id: str) -> Candidate:
    """A FHIR `Patient/{id}` as a candidate: resolved through the Patient of that id."""
    return Candidate(f"Patient/{resource_id}", "subject", Rule.REFERENCE, REFERENCE_SYSTEM)


def mask(value: str) -> str:
    """An identifier value as an ACK, a log-free list or a message to the sender shows it: all but
    the last two characters hidden (the whole of a value of four characters or fewer)."""
    if len(value) <= 4:
        return "*" * len(value)
    return "*" * (len(value) - 2) + value[-2:]
