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
    own = _entry_ids(ctx, store, items, actor)
    ids = {key: f"{item.resource_type}/{own[item.number]}" for item in items for key in item.keys}
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
) -> dict[int, str]:
    """Each entry's id; creates of the same thing twice in one Bundle get one."""
    ids: dict[int, str] = {}
    seen: dict[tuple[str, str], str] = {}
    for item in items:
        same = (item.resource_type, item.identifier or item.content_hash)
        if item.resource_id is None and same in seen:
            ids[item.number] = seen[same]
            continue
        ids[item.number] = _entry_id(ctx, store, item, actor)
        seen.setdefault(same, ids[item.number])
    return ids


def _entry_id(ctx: UnitContext, store: Store, item: BundleItem, actor: str) -> str:
    """A PUT's id; else the stored resource the create is again (by identifier, else by
    content), else a new id."""
    if item.resource_id is not None:
        return item.resource_id
    if item.resource_type == PATIENT and item.identifier is not None:
        # If-None-Exist: the Patient carrying that identifier (Patients are not indexed by one)
        carrying = store.client_patients_with([Identifier(*item.identifier.split("|", 1))])
        return carrying[0] if carrying else ctx.ids.new_id(PATIENT.lower())
    found = None
    if item.identifier is not None:
        found = store.resource_by_identifier(item.resource_type, item.identifier)
    if found is None:
        found = store.resource_by_content(item.resource_type, item.content_hash, actor)
    return found.id if found else ctx.ids.new_id(item.resource_type.lower())


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
