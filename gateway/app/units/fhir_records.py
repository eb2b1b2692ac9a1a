"""FHIR resources into the store, inside the service's units of work: each resource version is
kept with its effect (a lab result's ANC, a MedicationRequest's decision), and a resource sent
again unchanged is answered from the store, not processed twice."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gateway import lab_intake
from gateway.values import LabOutcome, Source
from rems_core.model import Identifier, LabResult, Patient
from rems_core.store.fhir_repo import ResourceIndex, StoredResource
from rems_core.store.repo import Store

if TYPE_CHECKING:
    from gateway.service import RemsService


@dataclass(frozen=True)
class ResourceDraft:
    """A resource as received and validated, with what the store finds it by."""

    resource_type: str
    body: dict[str, Any]
    content_hash: str
    index: ResourceIndex
    resource_id: str | None = None  # PUT names it; a create gets a new one (or its identifier's)
    if_none_exist: bool = False  # conditional create: an existing match is returned untouched
    if_match: int | None = None  # PUT with If-Match: the version it must replace


@dataclass(frozen=True)
class Recorded:
    resource: StoredResource
    created: bool  # a new resource (201), not a new version of one (200)
    unchanged: bool = False  # the same resource again, or a conditional create's match


class VersionConflict(Exception):
    """If-Match named another version than the current one (412)."""


class UnknownResource(Exception):
    """An update of a resource that does not exist (404: the server does no update-as-create)."""


class IdentifierTaken(Exception):
    """An update gives a resource the business identifier of another one (409)."""


@dataclass(frozen=True)
class LabSubmission:
    draft: ResourceDraft
    patient_identifiers: tuple[Identifier, ...]  # the subject's, when it is an identifier
    patient_id: str | None  # the subject, when it is the gateway's Patient/{id}
    result: LabResult | None  # None: stored, but nothing the REMS reads


@dataclass(frozen=True)
class LabsRecorded:
    recorded: list[Recorded]
    outcomes: list[LabOutcome]  # one per patient whose results were taken
    unknown_patients: list[str]  # literal Patient/{id} references to no patient
    sources: list[list[int]] = field(default_factory=list)  # per outcome: its submissions


def existing(store: Store, draft: ResourceDraft) -> StoredResource | None:
    if draft.resource_id is not None:
        return store.current_resource(draft.resource_type, draft.resource_id)
    if draft.index.identifier is not None:
        return store.resource_by_identifier(draft.resource_type, draft.index.identifier)
    return None


def _check_update(store: Store, draft: ResourceDraft, current: StoredResource | None) -> None:
    """An update names a resource that exists (no update-as-create), and keeps its identifier
    its own."""
    if current is None:
        raise UnknownResource(draft.resource_type)
    if draft.index.identifier is not None:
        holder = store.resource_by_identifier(draft.resource_type, draft.index.identifier)
        if holder is not None and holder.id != current.id:
            raise IdentifierTaken(draft.resource_type)


def put(
    service: RemsService,
    store: Store,
    draft: ResourceDraft,
    received: datetime,
    shape: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Recorded:
    """Store ``draft`` as a new resource or the next version of the one it names."""
    current = existing(store, draft)
    if draft.resource_id is not None:
        _check_update(store, draft, current)
    if draft.if_match is not None and (current is None or current.version_id != draft.if_match):
        raise VersionConflict(draft.resource_type)
    if current is not None and (draft.if_none_exist or current.content_hash == draft.content_hash):
        return Recorded(current, created=False, unchanged=True)
    resource_id = current.id if current is not None else draft.resource_id
    resource_id = resource_id or service.ids.new_id(draft.resource_type.lower())
    body = shape(draft.body) if shape else draft.body
    stored = store.put_resource(
        draft.resource_type, resource_id, body, draft.content_hash, draft.index, received, current
    )
    return Recorded(stored, created=current is None)


def record_labs(
    service: RemsService,
    store: Store,
    submissions: list[LabSubmission],
    source: Source,
    received: datetime,
) -> LabsRecorded:
    """Observations of one request (a create, or a Bundle's entries) in one unit of work."""
    recorded: list[Recorded] = []
    by_patient: dict[tuple[Identifier, ...], list[tuple[int, LabResult]]] = {}
    unknown: list[str] = []
    for number, submission in enumerate(submissions):
        patient = _patient(store, submission)
        if submission.patient_id is not None and patient is None:
            unknown.append(submission.patient_id)
            continue
        index = replace(submission.draft.index, patient_id=patient.rems_id if patient else None)
        done = put(service, store, replace(submission.draft, index=index), received)
        recorded.append(done)
        if submission.result is not None and not done.unchanged:
            identifiers = patient.identifiers if patient else submission.patient_identifiers
            by_patient.setdefault(tuple(identifiers), []).append((number, submission.result))
    outcomes = [
        lab_intake.ingest(
            service, store, list(identifiers), [r for _, r in taken], source, received
        )
        for identifiers, taken in by_patient.items()
    ]
    sources = [[number for number, _ in taken] for taken in by_patient.values()]
    return LabsRecorded(recorded, outcomes, unknown, sources)


def _patient(store: Store, submission: LabSubmission) -> Patient | None:
    if submission.patient_id is not None:
        return store.patient(submission.patient_id)
    return store.find_patient(submission.patient_identifiers)


class TransactionRefused(Exception):
    """A transaction entry names a Patient/{id} the gateway does not know: nothing is stored."""

    def __init__(self, unknown_patients: list[str]) -> None:
        super().__init__("unknown patient")
        self.unknown_patients = unknown_patients


def record_transaction(
    service: RemsService,
    store: Store,
    submissions: list[LabSubmission],
    dependents: Callable[[list[Recorded]], list[LabSubmission]],
    source: Source,
    received: datetime,
) -> LabsRecorded:
    """A transaction Bundle, all or nothing: its Observations, then the resources that refer to
    them (a DiagnosticReport), which ``dependents`` builds once the Observations' ids are known."""
    first = record_labs(service, store, submissions, source, received)
    if first.unknown_patients:
        raise TransactionRefused(first.unknown_patients)
    then = record_labs(service, store, dependents(first.recorded), source, received)
    if then.unknown_patients:
        raise TransactionRefused(then.unknown_patients)
    later = [[len(submissions) + number for number in taken] for taken in then.sources]
    return LabsRecorded(
        first.recorded + then.recorded, first.outcomes + then.outcomes, [], first.sources + later
    )


@dataclass(frozen=True)
class PatientNamed:
    """The patient a search names: by the gateway's id, by an identifier, or both (ANDed, as
    FHIR ANDs search parameters)."""

    patient_id: str | None = None
    identifier: Identifier | None = None


def patient_ids(store: Store, named: PatientNamed) -> list[str]:
    """The ids of the patient a search names ([] when they name none, or different ones)."""
    ids = {named.patient_id} if named.patient_id is not None else None
    if named.identifier is not None:
        found = store.find_patient([named.identifier])
        matched = {found.rems_id} if found else set()
        ids = matched if ids is None else ids & matched
    return sorted(ids or ())
