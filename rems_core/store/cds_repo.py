"""CDS Hooks (docs/contracts.md §6): the cards the services answered, and the feedback on them —
each (card, outcome, outcomeTimestamp) once."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects import postgresql, sqlite

from rems_core.store import tables as t

card_t = t.CdsCard.__table__
feedback_t = t.CdsFeedback.__table__


class CdsRepo:
    conn: Connection

    def add_cards(self, cards: list[dict[str, Any]]) -> None:
        """Cards answered; one already kept (the same uuid) is left as it is."""
        if not cards:
            return
        dialect = postgresql if self.conn.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(card_t).on_conflict_do_nothing(index_elements=["uuid"])
        self.conn.execute(statement, cards)

    def card(self, uuid: str) -> dict[str, Any] | None:
        row = self.conn.execute(select(card_t).where(card_t.c.uuid == uuid)).first()
        return dict(row._mapping) if row is not None else None

    def feedback_of(self, card: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            select(feedback_t).where(feedback_t.c.card == card).order_by(feedback_t.c.id)
        )
        return [dict(r._mapping) for r in rows]

    def add_feedback(self, values: dict[str, Any]) -> bool:
        """Record one outcome of a card; False when that (card, outcome, time) is recorded."""
        dialect = postgresql if self.conn.dialect.name == "postgresql" else sqlite
        statement = (
            dialect.insert(feedback_t)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["card", "outcome", "outcome_timestamp"])
            .returning(feedback_t.c.id)
        )
        return self.conn.execute(statement).first() is not None

    def set_feedback_draft(self, card: str, outcome: str, at: Any, draft: str) -> None:
        self.conn.execute(
            update(feedback_t)
            .where(
                feedback_t.c.card == card,
                feedback_t.c.outcome == outcome,
                feedback_t.c.outcome_timestamp == at,
            )
            .values(draft=draft)
        )
