"""HL7 v2 messages as received: duplicate control ids, the stored ACK, retention."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from rems_core.store import tables as t
from rems_core.store.prepared import PreparedInsert, PreparedQuery

message_t = t.Hl7MessageRow.__table__

_first_by_control = PreparedQuery(
    select(message_t.c.content_hash, message_t.c.ack)
    .where(
        message_t.c.sender == bindparam("sender"),
        message_t.c.control_id == bindparam("control_id"),
        message_t.c.disposition != "conflict",
    )
    .order_by(message_t.c.id)
    .limit(1)
)
_insert_message = PreparedInsert(insert(message_t))


@dataclass(frozen=True)
class MessageFilter:
    """Stored messages to replay: all of them unless narrowed (ANDed)."""

    control_ids: tuple[str, ...] = ()  # MSH-10 values
    sender: str | None = None  # "MSH-3|MSH-4"
    since: datetime | None = None  # received at or after
    until: datetime | None = None  # received before
    disposition: str | None = None
    limit: int = 100_000


@dataclass(frozen=True)
class StoredMessage:
    row_id: int
    sender: str
    control_id: str
    message_type: str
    received: datetime
    raw: bytes
    disposition: str
    patient_id: str | None


class MessageRepo:
    conn: Connection
    _deferred: dict[PreparedInsert, list[dict[str, Any]]]

    def _write(self, statement: PreparedInsert, values: dict[str, Any]) -> None: ...

    def message_by_control_id(self, sender: str, control_id: str) -> tuple[str, str] | None:
        """The content hash and ACK of the message first accepted with this control id (in the
        database, or stored earlier in this batch and not written yet)."""
        row = _first_by_control.first(self.conn, {"sender": sender, "control_id": control_id})
        if row is not None:
            return row.content_hash, row.ack
        for values in self._deferred.get(_insert_message, ()):
            if (values["sender"], values["control_id"]) == (sender, control_id) and values[
                "disposition"
            ] != "conflict":
                return values["content_hash"], values["ack"]
        return None

    def add_message(self, values: dict[str, Any]) -> None:
        """Nothing reads a message row back but ``message_by_control_id``: it goes with the
        batch's other deferred rows."""
        self._write(_insert_message, values)

    def stored_messages(self, wanted: MessageFilter) -> list[StoredMessage]:
        """The messages as received, oldest arrival first."""
        where = []
        if wanted.control_ids:
            where.append(message_t.c.control_id.in_(wanted.control_ids))
        if wanted.sender is not None:
            where.append(message_t.c.sender == wanted.sender)
        if wanted.since is not None:
            where.append(message_t.c.received >= wanted.since)
        if wanted.until is not None:
            where.append(message_t.c.received < wanted.until)
        if wanted.disposition is not None:
            where.append(message_t.c.disposition == wanted.disposition)
        rows = self.conn.execute(
            select(message_t)
            .where(*where)
            .order_by(message_t.c.received, message_t.c.id)
            .limit(wanted.limit)
        ).all()
        return [
            StoredMessage(
                r.id,
                r.sender,
                r.control_id,
                r.message_type,
                r.received,
                bytes(r.raw),
                r.disposition,
                r.patient_id,
            )
            for r in rows
        ]

    def set_message_disposition(
        self, row_id: int, disposition: str, patient_id: str | None
    ) -> None:
        """What a replay made of a stored message (its ACK, the one sent, stays)."""
        self.conn.execute(
            update(message_t)
            .where(message_t.c.id == row_id)
            .values(disposition=disposition, patient_id=patient_id)
        )

    def purge_messages(self, now: datetime) -> int:
        """Drop kept bodies of messages whose retention ended."""
        result = self.conn.execute(
            delete(message_t).where(
                message_t.c.purge_after.is_not(None), message_t.c.purge_after < now
            )
        )
        return result.rowcount or 0

    def forget_message_body(self, sender: str, control_id: str) -> None:
        """A held message's retention ended: its raw text goes, its ACK stays (resends)."""
        self.conn.execute(
            update(message_t)
            .where(message_t.c.sender == sender, message_t.c.control_id == control_id)
            .values(raw=b"")
        )
