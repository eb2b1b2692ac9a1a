"""The operator console's reads (docs/contracts.md §8): the HL7 messages as stored, the dispense
decisions, registry patients by an identifier's value, and a patient's PSFs as judged. Nothing
here writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, Table, func, select

from rems_core.store import tables as t

message_t = t.Hl7MessageRow.__table__
decision_t = t.DecisionRow.__table__
identifier_t = t.PatientIdentifierRow.__table__
psf_t = t.PsfRow.__table__

# A listing's columns: everything but the raw message and the ACK (read on the message's page).
_listed = [
    message_t.c[name]
    for name in (
        "id",
        "sender",
        "control_id",
        "message_type",
        "received",
        "disposition",
        "patient_id",
    )
]


@dataclass(frozen=True)
class MessageQuery:
    """Each given field must match; ``message_type`` is a prefix (`ORU`, `ORU^R01`)."""

    sender: str | None = None
    message_type: str | None = None
    disposition: str | None = None
    received_from: datetime | None = None
    received_to: datetime | None = None
    count: int = 50
    offset: int = 0


@dataclass(frozen=True)
class DecisionFilter:
    patient_id: str | None = None
    outcome: str | None = None
    count: int = 50
    offset: int = 0


class ConsoleRepo:
    conn: Connection

    def messages(self, wanted: MessageQuery) -> tuple[list[dict[str, Any]], int]:
        """One page of the stored messages that match, newest first, and how many match."""
        where = []
        if wanted.sender:
            where.append(message_t.c.sender == wanted.sender)
        if wanted.message_type:
            prefix = wanted.message_type.replace("\\", "").replace("%", "").replace("_", "\\_")
            where.append(message_t.c.message_type.like(f"{prefix}%", escape="\\"))
        if wanted.disposition:
            where.append(message_t.c.disposition == wanted.disposition)
        if wanted.received_from is not None:
            where.append(message_t.c.received >= wanted.received_from)
        if wanted.received_to is not None:
            where.append(message_t.c.received < wanted.received_to)
        newest = (message_t.c.received.desc(), message_t.c.id.desc())
        return self._paged(select(*_listed), message_t, where, newest, wanted)

    def message_row(self, message_id: int) -> dict[str, Any] | None:
        row = self.conn.execute(select(message_t).where(message_t.c.id == message_id)).first()
        return dict(row._mapping) if row is not None else None

    def message_number(self, sender: str, control_id: str) -> int | None:
        """The newest stored message of this sender and control id (a review item names its
        message so; for a reused control id, the one held is the newest)."""
        found = self.conn.execute(
            select(message_t.c.id)
            .where(message_t.c.sender == sender, message_t.c.control_id == control_id)
            .order_by(message_t.c.id.desc())
            .limit(1)
        ).scalar()
        return int(found) if found is not None else None

    def message_senders(self) -> list[str]:
        """Every sender (MSH-3|MSH-4) a stored message came from, for the filter's choices."""
        rows = self.conn.execute(select(message_t.c.sender).distinct().order_by(message_t.c.sender))
        return [r.sender for r in rows]

    def decisions(self, wanted: DecisionFilter) -> tuple[list[dict[str, Any]], int]:
        """One page of the dispense decisions that match, newest dispense date first."""
        where = []
        if wanted.patient_id:
            where.append(decision_t.c.patient_id == wanted.patient_id)
        if wanted.outcome:
            where.append(decision_t.c.outcome == wanted.outcome)
        newest = (decision_t.c.at.desc(), decision_t.c.id)
        return self._paged(select(decision_t), decision_t, where, newest, wanted)

    def _paged(
        self,
        query: Select[Any],
        table: Table,
        where: list[Any],
        order: tuple[Any, ...],
        wanted: MessageQuery | DecisionFilter,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of what matches, and how many match in all."""
        total = self.conn.execute(select(func.count()).select_from(table).where(*where))
        page = query.where(*where).order_by(*order).limit(wanted.count).offset(wanted.offset)
        rows = self.conn.execute(page).all()
        return [dict(r._mapping) for r in rows], total.scalar_one()

    def patients_with_value(self, value: str, system: str | None = None) -> list[str]:
        """The registry patients holding an identifier of this value (in this system)."""
        where = [identifier_t.c.value == value]
        if system:
            where.append(identifier_t.c.system == system)
        rows = self.conn.execute(
            select(identifier_t.c.patient_id).where(*where).distinct().limit(20)
        )
        return sorted(r.patient_id for r in rows)

    def psf_rows(self, patient_id: str) -> list[dict[str, Any]]:
        """The patient's PSFs as judged (rejected ones too), in order of submission."""
        rows = self.conn.execute(
            select(
                psf_t.c.id,
                psf_t.c.type,
                psf_t.c.status,
                psf_t.c.submitted_at,
                psf_t.c.reasons,
                psf_t.c.warnings,
                psf_t.c.source,
            )
            .where(psf_t.c.patient_id == patient_id)
            .order_by(psf_t.c.submitted_at, psf_t.c.id)
        ).all()
        return [dict(r._mapping) for r in rows]
