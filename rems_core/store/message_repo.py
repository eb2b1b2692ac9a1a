"""HL7 v2 messages as received: duplicate control ids, the stored ACK, retention."""

from __future__ import annotations

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
