"""Bundles: `POST /fhir` (FHIR's transaction/batch endpoint) and `POST /fhir/Bundle`
(docs/contracts.md §5), e.g. a DiagnosticReport with its Observations.

A transaction is all or nothing: every entry is read and checked first, then its Patients, its
Observations and the DiagnosticReports that refer to them are stored in one unit of work, with
references to entries' `fullUrl`s (`urn:uuid:…`) rewritten to the stored ids. A batch runs
each entry on its own (Patients first). Each entry's answer carries its status, Location, ETag
and an OperationOutcome of its REMS effect.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.app.errors import ClientIdTaken, IdentifierTaken, UnknownResource, VersionConflict
from gateway.app.values import (
    LabSubmission,
    PatientRecorded,
    PatientSubmission,
    Recorded,
    ResourceDraft,
    Source,
)
from gateway.fhir.auth import INTERACTION_LETTERS, Principal
from gateway.fhir.bundle_effects import effects
from gateway.fhir.bundle_entries import (
    OBSERVATION,
    PATIENT,
    REPORT,
    Entry,
    bundle_entries,
    in_entry,
    resolved,
    specimen_fallbacks,
    stored_ids,
    unresolved,
)
from gateway.fhir.http import (
    FhirError,
    FhirResponse,
    check_format,
    etag,
    json_body,
    prefer_return,
    version_of,
)
from gateway.fhir.observations import conditional_identifier, reading, record, submission
from gateway.fhir.patients import id_taken, patient_issues, patient_submission
from gateway.fhir.resources import (
    clinical_now,
    content_hash,
    context_of,
    location,
    service_of,
    validated,
)
from mappings.fhir.observation import draw_time, loinc_code
from mappings.fhir.outcome import Issue, operation_outcome
from mappings.fhir.references import identifier_key, subject_ref
from rems_core.store.fhir_repo import ResourceIndex

INTERACTION = {"POST": "create", "PUT": "update"}


@dataclass
class Answer:
    """What one entry got: its status, what was stored, and its issues."""

    status: int
    recorded: Recorded | None = None
    issues: list[Issue] = field(default_factory=list)


def observation_submission(
    request: Request, entry: Entry, fallbacks: dict[str, str]
) -> LabSubmission:
    specimen = next((fallbacks[k] for k in sorted(entry.keys) if k in fallbacks), None)
    try:
        found = reading(request, entry.resource, specimen)
        expected = version_of(entry.if_match) if entry.if_match else None
        return submission(entry.resource, found, entry.resource_id, entry.if_none_exist, expected)
    except FhirError as error:
        raise in_entry(entry, error) from None


@dataclass(frozen=True)
class ReportDraft:
    """A DiagnosticReport read and checked, waiting for its results' stored ids."""

    entry: Entry
    index: ResourceIndex
    subject: tuple[Any, ...]  # (identifiers, patient id)

    def submission(self, ids: dict[str, str]) -> LabSubmission:
        body = resolved(self.entry.resource, ids)
        draft = ResourceDraft(
            REPORT,
            body,
            content_hash(body),
            self.index,
            if_none_exist=self.entry.if_none_exist is not None,
        )
        identifiers, patient_id = self.subject
        return LabSubmission(draft, identifiers, patient_id, None)


def report_draft(request: Request, entry: Entry) -> ReportDraft:
    try:
        report = validated(entry.resource, REPORT)
        identifier = identifier_key(report.identifier)
        if entry.if_none_exist is not None:
            identifier = conditional_identifier(entry.if_none_exist)
    except FhirError as error:
        raise in_entry(entry, error) from None
    subject = subject_ref(report.subject)
    index = ResourceIndex(
        identifier=identifier,
        code=loinc_code(report.code),
        effective=draw_time(report, context_of(request).tz),
    )
    who = (subject.identifiers, subject.patient_id) if subject else ((), None)
    return ReportDraft(entry, index, who)


# --- transaction and batch ------------------------------------------------------------------


def allowed(principal: Principal, entry: Entry) -> FhirError | None:
    interaction = INTERACTION[entry.method]
    if principal.allows(entry.resource_type, interaction):
        return None
    scope = f"system/{entry.resource_type}.{INTERACTION_LETTERS[interaction]}"
    return FhirError(403, "forbidden", f"entry {entry.index}: this token does not grant {scope}")


async def transaction(
    request: Request, principal: Principal, items: list[Entry | FhirError], now: datetime
) -> list[Answer]:
    """Everything checked first; then one unit of work stores all of it, or nothing: the
    Patients, then the Observations (their subjects rewritten to the Patients' stored ids), then
    the DiagnosticReports that refer to them."""
    entries = _checked(principal, items)
    patients = [e for e in entries if e.resource_type == PATIENT]
    patient_made = _all_or_error(patients, patient_entry)
    named = {k: f"{PATIENT}/{e.resource_id or 'new'}" for e in patients for k in e.keys}
    observations = [e for e in entries if e.resource_type == OBSERVATION]
    fallbacks = specimen_fallbacks(entries)

    def observation_of(ids: dict[str, str]) -> Any:
        return lambda e: observation_submission(request, with_ids(e, ids), fallbacks)

    submissions = _all_or_error(observations, observation_of(named))
    reports = [e for e in entries if e.resource_type == REPORT]
    _all_or_error(reports, lambda e: report_draft(request, with_ids(e, named)))
    known = {key for e in observations + patients for key in e.keys}
    _raise_all([u for e in reports if (u := unresolved(e, known))])
    stored_patients: dict[str, str] = {}

    def labs(recorded: list[Recorded]) -> list[LabSubmission]:
        stored_patients.update(stored_ids(patients, recorded))
        return [observation_of(stored_patients)(e) for e in observations]

    def dependents(recorded: list[Recorded]) -> list[LabSubmission]:
        ids = stored_patients | stored_ids(observations, recorded)
        drafts = [report_draft(request, with_ids(e, stored_patients)) for e in reports]
        return [d.submission(ids) for d in drafts]

    source = Source("fhir", principal.client_id)
    try:
        both = await service_of(request).record_patient_transaction(
            patient_made, labs, dependents, source, now
        )
    except VersionConflict:
        raise FhirError(412, "conflict", "an entry's ifMatch names another version") from None
    except UnknownResource:
        raise FhirError(
            404, "not-found", "an entry updates an Observation that does not exist"
        ) from None
    except IdentifierTaken:
        raise FhirError(
            409, "duplicate", "an entry gives an Observation another one's identifier"
        ) from None
    except ClientIdTaken:
        raise FhirError(
            409, "conflict", "a Patient entry's id is another client's or a registry patient's"
        ) from None
    done = both.labs
    ordered = observations + reports
    found = effects(ordered, submissions, done)
    answers = {
        e.index: Answer(201 if d.created else 200, d, found.get(e.index, []))
        for e, d in zip(ordered, done.recorded, strict=True)
    }
    for entry, patient in zip(patients, both.patients, strict=True):
        answers[entry.index] = patient_answer(patient)
    return [answers[e.index] for e in entries]


def patient_entry(entry: Entry) -> PatientSubmission:
    try:
        return patient_submission(entry.resource, entry.resource_id, entry.if_none_exist)
    except FhirError as error:
        raise in_entry(entry, error) from None


def patient_answer(done: PatientRecorded) -> Answer:
    stored = done.recorded
    return Answer(201 if stored.created else 200, stored, patient_issues(done))


def with_ids(entry: Entry, ids: dict[str, str]) -> Entry:
    """The entry with its references to other entries (`urn:uuid:…`) rewritten to stored ids."""
    return replace(entry, resource=resolved(entry.resource, ids)) if ids else entry


def _checked(principal: Principal, items: list[Entry | FhirError]) -> list[Entry]:
    errors = [i for i in items if isinstance(i, FhirError)]
    errors += [d for i in items if isinstance(i, Entry) and (d := allowed(principal, i))]
    _raise_all(errors)
    return [i for i in items if isinstance(i, Entry)]


def _all_or_error(entries: list[Entry], read: Any) -> list[Any]:
    done, errors = [], []
    for entry in entries:
        try:
            done.append(read(entry))
        except FhirError as error:
            errors.append(error)
    _raise_all(errors)
    return done


def _raise_all(errors: list[FhirError]) -> None:
    """A refused transaction answers every problem, with the first one's status."""
    if errors:
        issues = [issue for error in errors for issue in error.issues]
        raise FhirError(errors[0].status, "", "", issues=issues)


async def batch(
    request: Request, principal: Principal, items: list[Entry | FhirError], now: datetime
) -> list[Answer]:
    """Each entry on its own, Patients first, then the rest in order; an entry may refer to one
    stored before it."""
    entries = [i for i in items if isinstance(i, Entry)]
    fallbacks = specimen_fallbacks(entries)
    ids: dict[str, str] = {}
    answers: dict[int, Answer] = {}
    first = [n for n, i in enumerate(items) if isinstance(i, Entry) and i.resource_type == PATIENT]
    for number in first + [n for n in range(len(items)) if n not in first]:
        item = items[number]
        try:
            if isinstance(item, FhirError):
                raise item
            answer = await _one(request, principal, with_ids(item, ids), fallbacks, ids, now)
            done = answer.recorded
            assert done is not None
            ids |= {k: f"{done.resource.resource_type}/{done.resource.id}" for k in item.keys}
        except FhirError as error:
            answer = Answer(error.status, None, error.issues)
        answers[number] = answer
    return [answers[n] for n in range(len(items))]


async def _one(
    request: Request,
    principal: Principal,
    entry: Entry,
    fallbacks: dict[str, str],
    ids: dict[str, str],
    now: datetime,
) -> Answer:
    if (refused := allowed(principal, entry)) is not None:
        raise refused
    if entry.resource_type == PATIENT:
        return await _one_patient(request, principal, entry, now)
    if entry.resource_type == REPORT:
        draft = report_draft(request, entry)
        if (missing := unresolved(entry, set(ids))) is not None:
            raise missing
        submissions = [draft.submission(ids)]
    else:
        submissions = [observation_submission(request, entry, fallbacks)]
    try:
        done, issues = await record(request, principal, submissions, now)
    except FhirError as error:
        raise in_entry(entry, error) from None
    stored = done.recorded[0]
    return Answer(201 if stored.created else 200, stored, issues)


async def _one_patient(
    request: Request, principal: Principal, entry: Entry, now: datetime
) -> Answer:
    made = patient_entry(entry)
    source = Source("fhir", principal.client_id)
    try:
        done = await service_of(request).record_patient(made, source, now)
    except ClientIdTaken:
        raise in_entry(entry, id_taken(entry.resource_id)) from None
    return patient_answer(done)


# --- the answer -------------------------------------------------------------------------------


def response_entry(request: Request, answer: Answer, prefer: str) -> dict[str, Any]:
    status = HTTPStatus(answer.status)
    response: dict[str, Any] = {"status": f"{status.value} {status.phrase}"}
    entry: dict[str, Any] = {}
    stored = answer.recorded.resource if answer.recorded else None
    if stored is not None:
        response |= {
            "location": location(stored),
            "etag": etag(stored.version_id),
            "lastModified": stored.last_updated.isoformat(),
        }
        entry["fullUrl"] = (
            f"{str(request.base_url).rstrip('/')}/fhir/{stored.resource_type}/{stored.id}"
        )
        if prefer == "representation":
            entry["resource"] = stored.body
    if stored is None or prefer != "minimal":
        response["outcome"] = operation_outcome(answer.issues)
    entry["response"] = response
    return entry


async def post_bundle(request: Request) -> Response:
    """A transaction or batch Bundle; answered with a transaction-response or batch-response."""
    check_format(request)
    principal: Principal = await request.app.state.fhir_auth.principal(request)
    data = await json_body(request)
    kind, items = bundle_entries(data)
    now = clinical_now(request, data)
    run = transaction if kind == "transaction" else batch
    answers = await run(request, principal, items, now)
    prefer = prefer_return(request)
    bundle = {
        "resourceType": "Bundle",
        "type": f"{kind}-response",
        "entry": [response_entry(request, a, prefer) for a in answers],
    }
    return FhirResponse(bundle, 200)


def include(router: APIRouter) -> None:
    """`POST [base]` and `POST [base]/Bundle` on the FHIR router."""
    for path in ("", "/", "/Bundle"):
        router.add_api_route(
            path,
            post_bundle,
            methods=["POST"],
            tags=["Bundle"],
            name=f"bundle{path.replace('/', '_')}",
            include_in_schema=path != "/",
        )
