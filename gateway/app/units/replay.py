"""A stored HL7 v2 message processed again under the current configuration (`rems-gateway
replay`, the console): its results read anew, matched against today's registry and filed with
their original arrival time. Results on file already are recognised as the same results and not
stored again; a message matching nobody is never held twice. Called inside the service's units
of work."""

from __future__ import annotations

from dataclasses import replace

from gateway.app.context import UnitContext
from gateway.app.units import identity, labs, review
from gateway.app.values import Replayed, Source
from rems_core.anc import is_anc_relevant
from rems_core.identity import Candidate
from rems_core.model import LabResult
from rems_core.store.message_repo import StoredMessage
from rems_core.store.repo import Store

ACCEPTED, UNMATCHED, NO_RESULTS, CONFLICT = "accepted", "unmatched", "no_results", "conflict"


def replay_lab_message(
    ctx: UnitContext,
    store: Store,
    stored: StoredMessage,
    candidates: list[Candidate],
    results: list[LabResult],
    source: Source,
) -> Replayed:
    """``results``: the message's results read again; ``source``: who replays it (the review
    items it files name them)."""
    done = Replayed(stored.row_id, stored.sender, stored.control_id, stored.disposition, "", "")
    if stored.disposition == CONFLICT:
        note = "a reused control id: not replayed (its review item stands)"
        return _kept(done, CONFLICT, note)
    pack = ctx.lab_pack()
    relevant = labs.once_each(pack, [r for r in results if is_anc_relevant(pack, r.code)])
    if not relevant:
        return _kept(done, NO_RESULTS, "no ANC-relevant result: nothing to file")
    found = identity.match(store, candidates)
    held = store.held_of_message(f"{stored.sender}#{stored.control_id}")
    patient = found.patient
    if patient is None:
        who = "two registry patients" if found.ambiguous else "no registry patient"
        still = f"still held for review ({', '.join(i['id'] for i in held)})" if held else ""
        note = f"matches {who}: " + (still or "not held again")
        return _kept(done, UNMATCHED, note)
    if held:
        for item in held:
            review.file_item(ctx, store, item, patient, source, ctx.now(), relevant)
        filed = tuple(item["id"] for item in held)
        note = f"filed to {patient.rems_id} (review item {', '.join(filed)} closed)"
        settled = _settled(store, done, ACCEPTED, patient.rems_id, note)
        return replace(settled, changed=True, filed=filed)
    if labs.on_file(ctx, store, patient, relevant):
        note = f"already on file for {patient.rems_id}: nothing new stored"
        return _settled(store, done, ACCEPTED, patient.rems_id, note)
    if stored.disposition == UNMATCHED:  # discarded by an operator, or purged
        note = f"now matches {patient.rems_id}, but its review item was closed: not filed"
        return _kept(done, UNMATCHED, note)
    arrival = Source("mllp", stored.sender, stored.control_id)
    labs.ingest(ctx, store, candidates, relevant, arrival, stored.received)
    settled = _settled(store, done, ACCEPTED, patient.rems_id, f"filed to {patient.rems_id}")
    return replace(settled, changed=True)


def _kept(done: Replayed, after: str, note: str) -> Replayed:
    """Nothing filed: the message row stays as it is (what was filed before stays filed)."""
    return replace(done, after=after, note=note)


def _settled(store: Store, done: Replayed, after: str, patient_id: str, note: str) -> Replayed:
    """Filed (now or before): the message row says so."""
    changed = done.before != after
    if changed:
        store.set_message_disposition(done.row_id, after, patient_id)
    return replace(done, after=after, note=note, changed=changed, patient=patient_id)
