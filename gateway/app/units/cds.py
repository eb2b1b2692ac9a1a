"""CDS Hooks inside the writer (docs/contracts.md §6): the cards a service answered kept, so
that feedback can name them; feedback recorded once per (card, outcome, time), audited, and an
override with a rationale reason put on the patient's PSF draft for the prescriber to sign."""

from __future__ import annotations

from typing import Any

from gateway.app import audit_records
from gateway.app.context import UnitContext
from gateway.app.errors import UnknownCard
from gateway.app.units import worklist
from gateway.app.values import CardFeedback, FeedbackRecorded, Source
from rems_core.model import Outcome
from rems_core.store.repo import Store

OVERRIDDEN = "overridden"


def keep_cards(store: Store, cards: list[dict[str, Any]]) -> None:
    store.add_cards(cards)


def record_feedback(
    ctx: UnitContext,
    store: Store,
    service: str,
    items: list[CardFeedback],
    source: Source,
) -> list[FeedbackRecorded]:
    """Every item names a card of this service (else UnknownCard, and nothing is recorded)."""
    cards = {item.card: store.card(item.card) for item in items}
    for uuid, card in cards.items():
        if card is None or card["service"] != service:
            raise UnknownCard(uuid)
    return [_record(ctx, store, item, cards[item.card], source) for item in items]


def _record(
    ctx: UnitContext,
    store: Store,
    item: CardFeedback,
    card: dict[str, Any] | None,
    source: Source,
) -> FeedbackRecorded:
    assert card is not None
    values: dict[str, Any] = {
        "card": item.card,
        "outcome": item.outcome,
        "outcome_timestamp": item.outcome_timestamp,
        "override_reason": item.override_reason,
        "comment": item.comment,
        "suggestions": list(item.suggestions),
        "draft": None,
        "received": ctx.now(),
    }
    if not store.add_feedback(values):
        return FeedbackRecorded(item.card, False)
    draft = _rationale_draft(ctx, store, item, card, source)
    if draft is not None:
        store.set_feedback_draft(item.card, item.outcome, item.outcome_timestamp, draft)
    values["draft"] = draft
    store.append_audit(audit_records.cds_feedback(ctx.now(), source, values, card))
    return FeedbackRecorded(item.card, True, draft)


def _rationale_draft(
    ctx: UnitContext,
    store: Store,
    item: CardFeedback,
    card: dict[str, Any],
    source: Source,
) -> str | None:
    """An override of a rationale-required card, with a reason, is the prescriber's rationale:
    it goes on the PSF draft, pending the prescriber's signature (rules §5.2)."""
    wanted = (
        item.outcome == OVERRIDDEN
        and item.rationale_reason is not None
        and card["outcome"] == Outcome.RATIONALE_REQUIRED.value
        and card["patient_id"] is not None
    )
    if not wanted:
        return None
    rationale = {
        "reason": item.rationale_reason,
        "text": item.comment,
        "card": item.card,
        "user": card["user_id"],
        "override_reason": item.override_reason,
    }
    return worklist.hold_rationale(
        ctx, store, card["patient_id"], rationale, item.outcome_timestamp, source
    )
