"""An HL7 v2 message into the store with its results and its ACK, in one unit of work: the ACK
leaves only after the commit, and a resend is answered with the ACK stored the first time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from gateway.app.context import UnitContext
from gateway.app.units import labs
from gateway.app.values import LabOutcome, ReceivedMessage, Source
from rems_core.model import Identifier, LabResult
from rems_core.store.repo import Store

# A message with nothing for the REMS is kept this long, for the integration engineer to look at.
NO_RESULTS_KEPT = timedelta(days=7)


def receive(
    ctx: UnitContext,
    store: Store,
    message: ReceivedMessage,
    identifiers: list[Identifier],
    results: list[LabResult],
    answer: Callable[[LabOutcome | None, str], str],
    source: Source,
) -> str:
    """The ACK for ``message`` (built by ``answer`` from the outcome and the disposition). A
    repeated control id with the same content gets the stored ACK; with other content, a
    conflict, held for review."""
    earlier = store.message_by_control_id(message.sender, message.control_id)
    if earlier is not None and earlier[0] == message.content_hash:
        return earlier[1]  # the same message again: not processed twice
    outcome = None
    if earlier is not None:
        disposition = "conflict"
    elif results:
        outcome = labs.ingest(ctx, store, identifiers, results, source, message.received)
        disposition = "accepted" if outcome.matched else "unmatched"
    else:
        disposition = "no_results"
    ack = answer(outcome, disposition)
    kept = message.received + NO_RESULTS_KEPT if disposition == "no_results" else None
    store.add_message(
        {
            "sender": message.sender,
            "control_id": message.control_id,
            "content_hash": message.content_hash,
            "message_type": message.message_type,
            "received": message.received,
            "raw": message.raw,
            "ack": ack,
            "disposition": disposition,
            "patient_id": outcome.patient if outcome else None,
            "purge_after": kept,
        }
    )
    return ack
