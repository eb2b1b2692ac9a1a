"""A Bundle's entries into the store in one unit of work (docs/contracts.md §5): every entry's
id is found or made first, so that references between entries (`urn:uuid:…`, `Type/id` of the
same Bundle) can be rewritten before anything is stored; then the Patients (linked to registry
patients), the resources stored as received, and the lab entries (Observations and
DiagnosticReports, judged per patient as one request).

An entry equal to what is stored (same id, or same business identifier, or — a create sent
again — the same content from the same client) is answered from the store: a Bundle sent twice
changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from gateway.app.context import UnitContext
from gateway.app.errors import BundleRefused, ClientIdTaken, IdentifierTaken, VersionConflict
from gateway.app.units import fhir_patients, fhir_records
from gateway.app.units.identity import PATIENT
from gateway.app.values import (
    BundleItem,
    BundleRecorded,
    EntrySubmission,
    LabSubmission,
    PatientSubmission,
    Source,
)
from rems_core.model import Identifier
from rems_core.store.repo import Store

REFUSALS = (VersionConflict, IdentifierTaken, ClientIdTaken)


def record_bundle(
    ctx: UnitContext,
    store: Store,
    items: Sequence[BundleItem],
    source: Source,
    received: datetime,
    atomic: bool,
) -> BundleRecorded:
    """``atomic``: a transaction (an entry refused refuses all: BundleRefused); else a batch
    or a collection, whose refused entries are reported and the others stored."""
    actor = source.actor
    own, ids = _entry_ids(ctx, store, items, actor)
    made = {item.number: item.build(own[item.number], ids) for item in items}
    refused = {n: e for n, s in made.items() if (e := _refusal(store, s, actor)) is not None}
    if atomic and refused:
        raise BundleRefused(refused)
    taken = {n: s for n, s in made.items() if n not in refused}
    patients = {
        n: fhir_patients.record_patient(ctx, store, s, source, received)
        for n, s in taken.items()
        if isinstance(s, PatientSubmission)
    }
    resources = {
        n: fhir_records.put(ctx, store, s, received, owner=actor)
        for n, s in taken.items()
        if not isinstance(s, PatientSubmission | LabSubmission)
    }
    lab_numbers = _lab_order([(n, s) for n, s in taken.items() if isinstance(s, LabSubmission)])
    submissions = [_lab(taken[n]) for n in lab_numbers]
    labs = fhir_records.record_labs(ctx, store, submissions, source, received)
    return BundleRecorded(patients, resources, lab_numbers, submissions, labs, refused)


def _entry_ids(
    ctx: UnitContext, store: Store, items: Sequence[BundleItem], actor: str
) -> tuple[dict[int, str], dict[str, str]]:
    """Each entry's id (number → id) and what the references to entries become (key →
    Type/id). A create is found again by its content with its references rewritten, so the
    entries it refers to are given theirs first; in a cycle of creates, one gets a new id."""
    own = {item.number: item.resource_id for item in items if item.resource_id is not None}
    ids = {
        key: f"{item.resource_type}/{own[item.number]}"
        for item in items
        if item.number in own
        for key in item.keys
    }
    seen: dict[tuple[str, str], str] = {}
    pending = [item for item in items if item.number not in own]
    while pending:
        ready = [item for item in pending if item.references <= ids.keys()] or pending[:1]
        for item in ready:
            digest = item.content_hash(ids)
            same = (item.resource_type, item.identifier or digest)
            found = seen.get(same) or _stored_id(store, item, digest, actor)
            own[item.number] = found or ctx.ids.new_id(item.resource_type.lower())
            seen.setdefault(same, own[item.number])
            ids |= {key: f"{item.resource_type}/{own[item.number]}" for key in item.keys}
        pending = [item for item in pending if item.number not in own]
    return own, ids


def _stored_id(store: Store, item: BundleItem, digest: str, actor: str) -> str | None:
    """The stored resource a create is again: by If-None-Exist or business identifier, else by
    its content (the client's own)."""
    if item.resource_type == PATIENT and item.identifier is not None:
        # If-None-Exist: the Patient carrying that identifier (Patients are not indexed by one)
        carrying = store.client_patients_with([Identifier(*item.identifier.split("|", 1))])
        return carrying[0] if carrying else None
    found = None
    if item.identifier is not None:
        found = store.resource_by_identifier(item.resource_type, item.identifier)
    if found is None:
        found = store.resource_by_content(item.resource_type, digest, actor)
    return found.id if found else None


def _refusal(store: Store, submission: EntrySubmission, actor: str) -> Exception | None:
    """Why the entry cannot be stored, found before anything of the Bundle is."""
    try:
        if isinstance(submission, PatientSubmission):
            fhir_patients.check(store, submission, actor)
        else:
            draft = submission.draft if isinstance(submission, LabSubmission) else submission
            fhir_records.check(store, draft, actor)
    except REFUSALS as refusal:
        return refusal
    return None


def _lab_order(labs: list[tuple[int, LabSubmission]]) -> list[int]:
    """Observations, then the DiagnosticReports that list them (docs/contracts.md §5)."""
    results = [n for n, s in labs if s.draft.resource_type == "Observation"]
    return results + [n for n, _ in labs if n not in results]


def _lab(submission: EntrySubmission) -> LabSubmission:
    assert isinstance(submission, LabSubmission)
    return submission
