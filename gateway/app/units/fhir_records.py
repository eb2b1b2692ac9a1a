"""FHIR resources into the store, inside the service's units of work: each resource version is
kept with its effect (a lab result's ANC, a MedicationRequest's decision), and a resource sent
again unchanged is answered from the store, not processed twice."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from gateway.app.context import UnitContext
from gateway.app.errors import ClientIdTaken, IdentifierTaken, VersionConflict
from gateway.app.units import identity, labs
from gateway.app.values import (
    LabsRecorded,
    LabSubmission,
    PatientNamed,
    Recorded,
    ResourceDraft,
    Source,
)
from rems_core.identity import Candidate, of_identifiers, reference
from rems_core.model import LabResult
from rems_core.store.fhir_repo import LAB_PREFIX, StoredResource
from rems_core.store.repo import Store

#: Ids the gateway gives resources of its own: no client may create one (an HL7 result shown as
#: an Observation is `lab-<row id>`).
RESERVED_ID_PREFIX = {"Observation": LAB_PREFIX}


def existing(store: Store, draft: ResourceDraft, owner: str | None = None) -> StoredResource | None:
    """The resource a draft names: by id (an update), else by business identifier, else (for a
    client's create) one of the client's with the same content: a create sent again."""
    if draft.resource_id is not None:
        return store.current_resource(draft.resource_type, draft.resource_id)
    if draft.index.identifier is not None:
        return store.resource_by_identifier(draft.resource_type, draft.index.identifier)
    if owner is not None:
        return store.resource_by_content(draft.resource_type, draft.content_hash, owner)
    return None


def check(store: Store, draft: ResourceDraft, owner: str | None = None) -> StoredResource | None:
    """The current version ``draft`` replaces (None: it is a new resource), once it may: an
    update names an id of its client's or a new one (update-as-create), keeps its identifier
    its own, and replaces the version If-Match names."""
    current = existing(store, draft, owner)
    if draft.resource_id is not None:
        _check_update(store, draft, current, owner)
    if draft.if_match is not None and (current is None or current.version_id != draft.if_match):
        raise VersionConflict(draft.resource_type)
    return current


def _check_update(
    store: Store, draft: ResourceDraft, current: StoredResource | None, owner: str | None
) -> None:
    named = f"{draft.resource_type}/{draft.resource_id}"
    reserved = RESERVED_ID_PREFIX.get(draft.resource_type)
    if current is None and reserved and str(draft.resource_id).startswith(reserved):
        raise ClientIdTaken(named)
    if current is not None and current.owner not in (None, owner):
        raise ClientIdTaken(named)
    if draft.index.identifier is not None:
        holder = store.resource_by_identifier(draft.resource_type, draft.index.identifier)
        if holder is not None and (current is None or holder.id != current.id):
            raise IdentifierTaken(draft.resource_type)


def put(
    ctx: UnitContext,
    store: Store,
    draft: ResourceDraft,
    received: datetime,
    shape: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    owner: str | None = None,
) -> Recorded:
    """Store ``draft`` as a new resource (of ``owner``, the client) or the next version of the
    one it names; the same content again is answered from the store."""
    current = check(store, draft, owner)
    if current is not None and (draft.if_none_exist or current.content_hash == draft.content_hash):
        return Recorded(current, created=False, unchanged=True)
    body = shape(draft.body) if shape else draft.body
    stored = new_version(ctx, store, draft, body, received, current, owner)
    return Recorded(stored, created=current is None)


def new_version(
    ctx: UnitContext,
    store: Store,
    draft: ResourceDraft,
    body: dict[str, Any],
    received: datetime,
    current: StoredResource | None,
    owner: str | None,
) -> StoredResource:
    """``body`` (the draft, as stored) as the next version of ``current``, or as a new resource
    with the draft's id, else a new one."""
    resource_id = current.id if current is not None else draft.resource_id
    resource_id = resource_id or ctx.ids.new_id(draft.resource_type.lower())
    return store.put_resource(
        draft.resource_type,
        resource_id,
        body,
        draft.content_hash,
        draft.index,
        received,
        current,
        owner=owner,
    )


def record_labs(
    ctx: UnitContext,
    store: Store,
    submissions: list[LabSubmission],
    source: Source,
    received: datetime,
) -> LabsRecorded:
    """Observations of one request (a create, or a Bundle's entries) in one unit of work. Those
    whose subject names no registry patient are stored all the same, and held for review."""
    recorded: list[Recorded] = []
    groups: dict[object, Group] = {}
    for number, submission in enumerate(submissions):
        candidates = subject_candidates(submission)
        found = identity.match(store, candidates)
        patient = found.patient
        index = replace(submission.draft.index, patient_id=patient.rems_id if patient else None)
        done = put(ctx, store, replace(submission.draft, index=index), received, owner=source.actor)
        recorded.append(done)
        if submission.result is not None and not done.unchanged:
            key = patient.rems_id if patient else tuple(candidates)
            group = groups.setdefault(key, Group(candidates))
            group.add(number, submission.result, done.resource)
    outcomes = [
        labs.ingest(ctx, store, g.candidates, g.results, source, received, tuple(g.resources))
        for g in groups.values()
    ]
    return LabsRecorded(recorded, outcomes, [g.numbers for g in groups.values()])


@dataclass
class Group:
    """The results of one request for one patient (or for the same unmatched subject)."""

    candidates: list[Candidate]
    numbers: list[int] = field(default_factory=list)
    results: list[LabResult] = field(default_factory=list)
    resources: list[str] = field(default_factory=list)

    def add(self, number: int, result: LabResult, resource: StoredResource) -> None:
        self.numbers.append(number)
        self.results.append(result)
        self.resources.append(f"{resource.resource_type}/{resource.id}")


def subject_candidates(submission: LabSubmission) -> list[Candidate]:
    candidates = of_identifiers(list(submission.patient_identifiers))
    if submission.patient_id is not None:
        candidates.append(reference(submission.patient_id))
    return candidates


def patient_ids(store: Store, named: PatientNamed) -> list[str]:
    """The ids of the patient a search names ([] when they name none, or different ones)."""
    ids = {named.patient_id} if named.patient_id is not None else None
    if named.identifier is not None:
        found = store.find_patient([named.identifier])
        matched = {found.rems_id} if found else set()
        ids = matched if ids is None else ids & matched
    return sorted(ids or ())
