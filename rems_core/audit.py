"""§9 audit: hash-chained records, and the check that finds an edited, deleted, inserted or
truncated one.

Each record's hash covers its own fields and its predecessor's hash, so a change anywhere breaks
every later link. The head (the newest seq and hash) is kept in the database; a checkpoint of the
head written elsewhere catches a truncation that rewrote the head as well.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, is_dataclass, replace
from datetime import UTC, date, datetime
from functools import cache
from typing import Any

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    clinical_at: datetime
    kind: str
    channel: str
    actor: str
    subject: str | None
    input_hash: str
    input_ref: str
    outcome: str
    rule_pack: str = ""
    rule_pack_version: str = ""
    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    seq: int = 0
    prev_hash: str = ""
    hash: str = field(default="", compare=False)


@dataclass(frozen=True)
class ChainHead:
    seq: int
    hash: str


def digest(value: Any) -> str:
    """sha256 of a value's canonical JSON (sorted keys, no spaces): inputs and records alike."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def digest_of_plain(value: Any) -> str:
    """``digest(to_plain(value))`` without building the plain copy first: the JSON encoder asks
    ``_plain`` for what it cannot write itself (enums are text already)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if is_dataclass(value) and not isinstance(value, type):
        return {name: getattr(value, name) for name in _field_names(type(value))}
    return str(value)


@cache
def _field_names(kind: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(kind))


def columns(entry: AuditEntry) -> dict[str, Any]:
    """The record's fields as stored."""
    values = {name: getattr(entry, name) for name in _field_names(AuditEntry)}
    values["reasons"], values["warnings"] = list(entry.reasons), list(entry.warnings)
    return values


def record_hash(entry: AuditEntry, **changes: Any) -> str:
    """The hash of ``entry`` with ``changes`` made (without making the changed entry)."""
    hashed = columns(entry) | changes
    hashed.pop("hash")
    # As stored: UTC to the microsecond, whatever offset the caller's times carried.
    hashed["at"] = entry.at.astimezone(UTC).isoformat(timespec="microseconds")
    hashed["clinical_at"] = entry.clinical_at.astimezone(UTC).isoformat(timespec="microseconds")
    return digest(hashed)


def chained(entry: AuditEntry, head: ChainHead) -> AuditEntry:
    """The entry as the record that follows ``head``."""
    link = {"seq": head.seq + 1, "prev_hash": head.hash}
    return replace(entry, **link, hash=record_hash(entry, **link))


@dataclass(frozen=True)
class Finding:
    seq: int
    problem: str

    def __str__(self) -> str:
        return f"audit record {self.seq}: {self.problem}"


def verify(
    records: Iterable[AuditEntry], head: ChainHead, checkpoint: ChainHead | None = None
) -> Finding | None:
    """The first bad record, or None when the chain, its head and the checkpoint agree."""
    previous = ChainHead(0, GENESIS)
    seen: dict[int, str] = {}
    for record in records:
        if record.seq != previous.seq + 1:
            missing = previous.seq + 1
            return Finding(missing, f"missing: the chain jumps from {previous.seq} to {record.seq}")
        if record.prev_hash != previous.hash:
            return Finding(record.seq, "does not follow its predecessor (inserted or reordered)")
        if record_hash(record) != record.hash:
            return Finding(record.seq, "its content does not match its hash (edited)")
        previous = ChainHead(record.seq, record.hash)
        if checkpoint is not None and record.seq == checkpoint.seq:
            seen[record.seq] = record.hash
    if previous != head:
        if previous.seq > head.seq:
            return Finding(head.seq + 1, "beyond the chain head (inserted after it)")
        return Finding(previous.seq + 1, f"missing: the head says the chain ends at {head.seq}")
    if checkpoint is not None and checkpoint.seq > 0:
        if checkpoint.seq not in seen:
            return Finding(checkpoint.seq, "named by the checkpoint but missing (truncated)")
        if seen[checkpoint.seq] != checkpoint.hash:
            return Finding(checkpoint.seq, "differs from the checkpoint (rewritten)")
    return None
