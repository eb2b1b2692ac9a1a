"""HL7 v2 messages as received: duplicate control ids, the stored ACK, retention."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select

from rems_core.store import tables as t

message_t = t.Hl7MessageRow.__table__

_first_by_control = (
    select(message_t.c.content_hash, message_t.c.ack)
    .where(
        message_t.c.sender == bindparam("sender"),
        message_t.c.control_id == bindparam("control_id"),
        message_t.c.disposition != "conflict",
    )
    .order_by(message_t.c.id)
    .limit(1)
)
_insert_message = insert(message_t)


class MessageRepo:
    conn: Connection

    def message_by_control_id(self, sender: str, control_id: str) -> tuple[str, str] | None:
        """The content hash and ACK of the message first accepted with this control id."""
        row = self.conn.execute(
            _first_by_control, {"sender": sender, "control_id": control_id}
        ).first()
        return (row.content_hash, row.ack) if row else None

    def add_message(self, values: dict[str, Any]) -> None:
        self.conn.execute(_insert_message, values)

    def purge_messages(self, now: datetime) -> int:
        """Drop kept bodies of messages whose retention ended."""
        result = self.conn.execute(
            delete(message_t).where(
                message_t.c.purge_after.is_not(None), message_t.c.purge_after < now
            )
        )
        return result.rowcount or 0
