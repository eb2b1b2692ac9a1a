"""A client's FHIR Patients (docs/contracts.md §5), inside the service's units of work: stored
with the client's id, linked by their identifiers to a registry patient, so that a result naming
`Patient/{id}` (before or after) reaches that patient's file. Ids are one space per gateway."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from gateway.app.context import UnitContext
from gateway.app.errors import ClientIdTaken
from gateway.app.units import identity, review
from gateway.app.units.identity import PATIENT
from gateway.app.values import (
    PatientRecorded,
    PatientSubmission,
    Recorded,
    Source,
)
from rems_core.identity import REFERENCE_SYSTEM, of_identifiers
from rems_core.model import Identifier
from rems_core.store.fhir_repo import StoredResource
from rems_core.store.repo import Store


def check(store: Store, submission: PatientSubmission, client: str) -> StoredResource | None:
    """The Patient a submission replaces (a PUT), or the match of a conditional create; a PUT
    to a registry patient's id, or to another client's Patient, is refused (ClientIdTaken)."""
    draft = submission.draft
    if draft.resource_id is None:
        carrying = store.client_patients_with(
            [submission.if_none_exist] if draft.if_none_exist else []
        )
        return store.current_resource(PATIENT, carrying[0]) if carrying else None
    if store.patient(draft.resource_id) is not None:
        raise ClientIdTaken(f"{PATIENT}/{draft.resource_id}")  # a registry patient's id
    current = store.current_resource(PATIENT, draft.resource_id)
    if current is not None and current.owner != client:
        raise ClientIdTaken(f"{PATIENT}/{draft.resource_id}")
    return current


def record_patient(
    ctx: UnitContext,
    store: Store,
    submission: PatientSubmission,
    source: Source,
    received: datetime,
) -> PatientRecorded:
    """Store the Patient (a new version unless it is the same content again), keep its
    identifiers, and link it when they name exactly one registry patient: the identifiers are
    attached to that patient (as an ADT A08 adds them) and every result held for them, or for
    `Patient/{id}`, is filed."""
    draft = submission.draft
    current = check(store, submission, source.actor)
    if current is not None and draft.if_none_exist:
        return PatientRecorded(Recorded(current, False, True), current.patient_id)
    found = identity.match(store, of_identifiers(list(submission.identifiers)))
    patient = found.patient
    if current is not None and current.content_hash == draft.content_hash:
        done = Recorded(current, created=False, unchanged=True)
        if patient is not None and current.patient_id is None:
            store.link_resources([f"{PATIENT}/{current.id}"], patient.rems_id)
    else:
        resource_id = draft.resource_id or ctx.ids.new_id(PATIENT.lower())
        index = replace(draft.index, patient_id=patient.rems_id if patient else None)
        body, digest = draft.body, draft.content_hash
        stored = store.put_resource(
            PATIENT, resource_id, body, digest, index, received, current, owner=source.actor
        )
        done = Recorded(stored, created=current is None)
    resource_id = done.resource.id
    store.set_client_patient_identifiers(resource_id, submission.identifiers)
    if patient is None:
        return PatientRecorded(done, None, ambiguous=found.ambiguous)
    attached = review.attach(ctx, store, patient, submission.identifiers, source, received)
    own = Identifier(REFERENCE_SYSTEM, f"{PATIENT}/{resource_id}")
    filed = attached.filed + review.file_held(ctx, store, patient, [own], source, received)
    return PatientRecorded(done, patient.rems_id, filed=tuple(filed))
