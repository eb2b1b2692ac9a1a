"""An HL7 v2 message into the store with its effect and its ACK, in one unit of work: the ACK
leaves only after the commit, and a resend is answered with the ACK stored the first time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from gateway.app.context import UnitContext
from gateway.app.units import adt, identity, labs
from gateway.app.values import LabOutcome, ReceivedMessage, Source
from mappings.hl7v2.adt import AdtEvent
from rems_core.identity import Candidate
from rems_core.model import Finding, LabResult
from rems_core.store.repo import Store

# A message with nothing for the REMS is kept this long, for the integration engineer to look at.
NO_RESULTS_KEPT = timedelta(days=7)
REUSED_CONTROL_ID = Finding(
    "DUPLICATE_CONTROL_ID", "this control id was used for another message; held for review"
)
Answer = Callable[[LabOutcome | None, str], str]


def receive(
    ctx: UnitContext,
    store: Store,
    message: ReceivedMessage,
    candidates: list[Candidate],
    results: list[LabResult],
    answer: Answer,
    source: Source,
) -> str:
    """The ACK for an ORU (built by ``answer`` from the outcome and the disposition)."""

    def process() -> tuple[LabOutcome | None, str]:
        if not results:
            return None, "no_results"
        outcome = labs.ingest(ctx, store, candidates, results, source, message.received)
        return outcome, "accepted" if outcome.matched else "unmatched"

    return receive_processed(ctx, store, message, candidates, answer, source, process)


def receive_adt(
    ctx: UnitContext,
    store: Store,
    message: ReceivedMessage,
    event: AdtEvent,
    answer: Answer,
    source: Source,
) -> str:
    """The ACK for an ADT message: identifiers added or merged, or nothing of a patient the
    registry does not know (of that message, the log keeps only who sent what, and the ACK)."""

    def process() -> tuple[LabOutcome | None, str]:
        outcome = adt.apply(ctx, store, event, source, message.received)
        return outcome, adt.disposition(outcome)

    candidates = [c for p in event.patients for c in p.candidates]
    return receive_processed(ctx, store, message, candidates, answer, source, process)


def receive_processed(
    ctx: UnitContext,
    store: Store,
    message: ReceivedMessage,
    candidates: list[Candidate],
    answer: Answer,
    source: Source,
    process: Callable[[], tuple[LabOutcome | None, str]],
) -> str:
    """A repeated control id with the same content gets the stored ACK; with other content, a
    conflict, held for review; else the message is processed, and kept with its ACK."""
    earlier = store.message_by_control_id(message.sender, message.control_id)
    if earlier is not None and earlier[0] == message.content_hash:
        return earlier[1]  # the same message again: not processed twice
    if earlier is not None:
        outcome, disposition = None, _conflict(ctx, store, message, candidates, source)
    else:
        outcome, disposition = process()
    ack = answer(outcome, disposition)
    kept = message.received + NO_RESULTS_KEPT if disposition == "no_results" else None
    _keep(store, message, ack, disposition, outcome, kept)
    return ack


def _conflict(
    ctx: UnitContext,
    store: Store,
    message: ReceivedMessage,
    candidates: list[Candidate],
    source: Source,
) -> str:
    held = identity.Held(
        kind=identity.CONFLICT,
        candidates=candidates,
        source=source,
        received=message.received,
        findings=(REUSED_CONTROL_ID,),
        message=f"{message.sender}#{message.control_id}",
    )
    identity.hold(ctx, store, held)
    return "conflict"


def _keep(
    store: Store,
    message: ReceivedMessage,
    ack: str,
    disposition: str,
    outcome: LabOutcome | None,
    purge_after: datetime | None,
) -> None:
    store.add_message(
        {
            "sender": message.sender,
            "control_id": message.control_id,
            "content_hash": message.content_hash,
            "message_type": message.message_type,
            "received": message.received,
            "raw": b"" if disposition == "ignored" else message.raw,
            "ack": ack,
            "disposition": disposition,
            "patient_id": outcome.patient if outcome else None,
            "purge_after": purge_after,
        }
    )
