"""Observation: create (plain and conditional), update (a correction), read, vread, search."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response

from gateway.app.errors import ClientIdTaken, IdentifierTaken, VersionConflict
from gateway.app.values import LabSubmission, PatientNamed, ResourceDraft, Source
from gateway.fhir.auth import Principal, requires
from gateway.fhir.http import FhirError, FhirResponse, check_format, json_body, version_of
from gateway.fhir.reads import add_reads
from gateway.fhir.resources import (
    check_url_id,
    clinical_now,
    context_of,
    id_taken,
    reads_of,
    searchset,
    service_of,
    validated,
    written,
)
from gateway.fhir.search import PAGING, date_range, identifier_param, page, search_parameters
from mappings.fhir.content import content_hash
from mappings.fhir.observation import ObservationReading, read_observation
from mappings.fhir.outcome import Issue, lab_issues
from rems_core.model import Identifier
from rems_core.store.fhir_repo import ResourceIndex, ResourceQuery

router = APIRouter(tags=["Observation"])
TYPE = "Observation"


def reading(
    request: Request, data: dict[str, Any], specimen: str | None = None
) -> ObservationReading:
    ctx = context_of(request)
    observation = validated(data, TYPE)
    found = read_observation(observation, ctx.lab_pack(), ctx.tz, specimen)
    errors = [p for p in found.problems if p.severity == "error"]
    if errors:
        raise FhirError(422, "invalid", "", issues=errors)
    return found


def submission(
    data: dict[str, Any],
    found: ObservationReading,
    resource_id: str | None = None,
    if_none_exist: str | None = None,
    if_match: int | None = None,
) -> LabSubmission:
    identifier = found.identifier
    if if_none_exist is not None:
        identifier = conditional_identifier(if_none_exist)
    subject = found.subject
    assert subject is not None  # reading() refused a resource without one
    draft = ResourceDraft(
        TYPE,
        data,
        content_hash(data),
        ResourceIndex(identifier=identifier, code=found.code, effective=found.effective),
        resource_id=resource_id,
        if_none_exist=if_none_exist is not None,
        if_match=if_match,
    )
    return LabSubmission(
        draft, subject.identifiers, subject.patient_id, found.result, tuple(found.warnings)
    )


def conditional_identifier(if_none_exist: str) -> str:
    """`If-None-Exist: identifier=system|value` (the one criterion a create is matched by)."""
    name, _, value = if_none_exist.partition("=")
    if name.strip() != "identifier" or "|" not in value:
        raise FhirError(
            400,
            "not-supported",
            "If-None-Exist supports identifier=system|value only",
            ("If-None-Exist",),
        )
    return value.strip()


async def record(
    request: Request, principal: Principal, submissions: list[LabSubmission], now: datetime
) -> tuple[Any, list[Issue]]:
    source = Source("fhir", principal.client_id)
    try:
        done = await service_of(request).record_labs(submissions, source, now)
    except VersionConflict:
        raise FhirError(
            412, "conflict", "If-Match names another version than the current one"
        ) from None
    except ClientIdTaken:
        raise id_taken(TYPE, submissions[0].draft.resource_id) from None
    except IdentifierTaken:
        raise FhirError(
            409, "duplicate", "another Observation has this identifier", ("Observation.identifier",)
        ) from None
    issues = lab_issues((), [w for made in submissions for w in made.warnings])
    for outcome in done.outcomes:
        issues += lab_issues(outcome.results, outcome.warnings)
    if any(r.unchanged for r in done.recorded):
        issues.append(Issue("information", "informational", "already stored: not processed again"))
    return done, issues


async def store_one(
    request: Request, principal: Principal, data: dict[str, Any], made: LabSubmission
) -> Response:
    """One Observation stored (a create or an update), answered as `Prefer` asks."""
    done, issues = await record(request, principal, [made], clinical_now(request, data))
    result = done.recorded[0]
    return written(request, result.resource, result.created, issues)


@router.post("/Observation", status_code=201)
async def create_observation(
    request: Request,
    principal: Annotated[Principal, requires(TYPE, "create")],
    if_none_exist: Annotated[str | None, Header()] = None,
) -> Response:
    """Store a lab result (ANC, WBC or differential); its REMS effect comes back as an
    OperationOutcome with `Prefer: return=OperationOutcome`."""
    check_format(request)
    data = await json_body(request)
    found = reading(request, data)
    return await store_one(request, principal, data, submission(data, found, None, if_none_exist))


@router.put("/Observation/{resource_id}")
async def update_observation(
    request: Request,
    resource_id: str,
    principal: Annotated[Principal, requires(TYPE, "update")],
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    """A new version of an Observation: a correction (`corrected`/`amended`) or a cancellation;
    or, for an id no one has used, the Observation with the client's id (update-as-create)."""
    check_format(request)
    data = await json_body(request)
    check_url_id(data, "Observation", resource_id)
    found = reading(request, data)
    expected = version_of(if_match) if if_match else None
    made = submission(data, found, resource_id, None, expected)
    return await store_one(request, principal, data, made)


@dataclass(frozen=True)
class LabSearch:
    """The search parameters Observations and DiagnosticReports share."""

    patient: str | None
    subject: str | None
    code: str | None
    date: list[str] | None
    sort: str | None
    count: int | None
    offset: int | None


#: The search parameters of Observations and DiagnosticReports (the CapabilityStatement's), and
#: everything a search of them takes.
LAB_SEARCH = ("patient", "subject", "code", "date")
LAB_SEARCH_TAKES = (*LAB_SEARCH, "patient:identifier", "subject:identifier", "_sort", *PAGING)


def lab_search(
    patient: str | None = None,
    subject: str | None = None,
    code: str | None = None,
    date: Annotated[list[str] | None, Query()] = None,
    sort: Annotated[str | None, Query(alias="_sort")] = None,
    count: Annotated[int | None, Query(alias="_count")] = None,
    offset: Annotated[int | None, Query(alias="_offset")] = None,
) -> LabSearch:
    return LabSearch(patient, subject, code, date, sort, count, offset)


@router.get("/Observation")
async def search_observations(
    request: Request,
    _: Annotated[Principal, requires(TYPE, "search")],
    search: Annotated[LabSearch, Depends(lab_search)],
) -> FhirResponse:
    """Search by `patient` or `subject` (an id, `Patient/{id}`), `patient:identifier` /
    `subject:identifier` (system|value), `code` (LOINC, comma-separated, optional
    `http://loinc.org|`), `date` (eq/ge/gt/le/lt), `_sort` (date or -date), `_count`,
    `_offset`. Any other parameter is 400, unless `Prefer: handling=lenient`."""
    return await search_labs(request, TYPE, search)


async def search_labs(request: Request, resource_type: str, search: LabSearch) -> FhirResponse:
    check_format(request)
    used = search_parameters(request, LAB_SEARCH_TAKES)
    by_identifier = request.query_params.get("patient:identifier") or request.query_params.get(
        "subject:identifier"
    )
    named = {p.removeprefix("Patient/") for p in (search.patient, search.subject) if p}
    if len(named) > 1:
        raise FhirError(400, "value", "patient and subject name two patients", ("subject",))
    start, before = date_range(search.date or [])
    newest_first = _sort_order(search.sort)
    limit, skip = page(search.count, search.offset)
    code = search.code
    codes = [c.removeprefix("http://loinc.org|") for c in code.split(",")] if code else []
    query = ResourceQuery(resource_type, None, codes, start, before, newest_first, limit, skip)
    found, total = await reads_of(request).search_resources(
        query, _patient_named(search.patient or search.subject, by_identifier)
    )
    return searchset(request, used, found, total, skip, limit)


def _sort_order(sort: str | None) -> bool:
    if sort in (None, "date"):
        return False
    if sort == "-date":
        return True
    raise FhirError(400, "not-supported", "_sort supports date and -date", ("_sort",))


def _patient_named(patient: str | None, by_identifier: str | None) -> PatientNamed | None:
    if patient is None and by_identifier is None:
        return None
    identifier = Identifier(*identifier_param(by_identifier)) if by_identifier else None
    return PatientNamed(patient.removeprefix("Patient/") if patient else None, identifier)


add_reads(router, TYPE)
