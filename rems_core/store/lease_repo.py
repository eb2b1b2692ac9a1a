"""The scheduler's lease: which gateway of a cluster runs the periodic work, until when.

Taking the lease is one conditional statement (an upsert whose update applies only when the row
is the taker's own or has expired), so two processes taking it in the same instant cannot both
win: on PostgreSQL the second waits for the first's row (or its insert) and then evaluates the
condition against what the first committed; on SQLite writers take the database one at a time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, case, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from rems_core.store import tables as t

lease_t = t.SchedulerLease.__table__


def _upsert(conn: Connection) -> Any:
    """INSERT … ON CONFLICT in the connection's dialect (both have it, with the same shape)."""
    return (
        postgresql.insert(lease_t) if conn.dialect.name == "postgresql" else sqlite.insert(lease_t)
    )


class LeaseRepo:
    conn: Connection

    def take_lease(self, name: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        """Hold lease ``name`` until ``now + ttl``: taken when nobody holds it or its holder's
        time ran out, renewed when ``holder`` holds it already; False when another holds it."""
        insert = _upsert(self.conn).values(
            name=name, holder=holder, acquired=now, expires=now + ttl
        )
        new = insert.excluded
        ours = lease_t.c.holder == new.holder
        taken = insert.on_conflict_do_update(
            index_elements=[lease_t.c.name],
            set_={
                "holder": new.holder,
                "acquired": case((ours, lease_t.c.acquired), else_=new.acquired),
                "expires": new.expires,
            },
            where=or_(ours, lease_t.c.expires <= new.acquired),
        ).returning(lease_t.c.name)
        return self.conn.execute(taken).first() is not None

    def release_lease(self, name: str, holder: str, now: datetime) -> None:
        """Let the lease go at ``now`` (if ``holder`` still holds it): another may take it."""
        self.conn.execute(
            update(lease_t)
            .where(lease_t.c.name == name, lease_t.c.holder == holder)
            .values(expires=now)
        )

    def record_run(self, name: str, holder: str, until: datetime) -> None:
        """The work ran up to ``until`` under ``holder``'s lease (kept across holders)."""
        self.conn.execute(
            update(lease_t)
            .where(lease_t.c.name == name, lease_t.c.holder == holder)
            .values(last_run=until)
        )

    def lease(self, name: str) -> dict[str, Any] | None:
        """Who holds lease ``name`` until when, and when the work last ran (None: never taken)."""
        row = self.conn.execute(select(lease_t).where(lease_t.c.name == name)).first()
        return dict(row._mapping) if row is not None else None
