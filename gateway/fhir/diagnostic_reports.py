"""DiagnosticReport: create (plain and conditional), update (update-as-create keeps the client's
id), read, vread, search — the report a lab sends with its Observations (docs/contracts.md §5).
A report has no REMS effect of its own: its Observations carry the results, and an Observation
of the same Bundle without a date or specimen takes the report's."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response

from gateway.app.values import LabSubmission, ResourceDraft
from gateway.fhir import capability
from gateway.fhir.auth import Principal, requires
from gateway.fhir.http import FhirResponse, check_format, json_body, version_of
from gateway.fhir.observations import (
    LAB_SEARCH,
    LabSearch,
    conditional_identifier,
    lab_search,
    search_labs,
    store_one,
)
from gateway.fhir.reads import add_reads
from gateway.fhir.resources import check_url_id, context_of, validated
from mappings.fhir.content import content_hash
from mappings.fhir.observation import draw_time, loinc_code
from mappings.fhir.references import identifier_key, subject_ref
from rems_core.store.fhir_repo import ResourceIndex

router = APIRouter(tags=["DiagnosticReport"])
TYPE = "DiagnosticReport"

capability.declare(
    TYPE,
    ["create", "update", "read", "vread", "search-type"],
    search=LAB_SEARCH,
    conditional_create=True,
    update_create=True,
)


def report_submission(
    request: Request,
    data: dict[str, Any],
    resource_id: str | None = None,
    if_none_exist: str | None = None,
    if_match: int | None = None,
) -> LabSubmission:
    """A DiagnosticReport as received (raises FhirError 400/422), found by its identifier, LOINC
    code and effective time, about the patient its subject names."""
    report = validated(data, TYPE)
    identifier = identifier_key(report.identifier)
    if if_none_exist is not None:
        identifier = conditional_identifier(if_none_exist)
    index = ResourceIndex(
        identifier=identifier,
        code=loinc_code(report.code),
        effective=draw_time(report, context_of(request).tz),
    )
    draft = ResourceDraft(
        TYPE,
        data,
        content_hash(data),
        index,
        resource_id=resource_id,
        if_none_exist=if_none_exist is not None,
        if_match=if_match,
    )
    subject = subject_ref(report.subject)
    identifiers, patient_id = (subject.identifiers, subject.patient_id) if subject else ((), None)
    return LabSubmission(draft, identifiers, patient_id, None)


@router.post("/DiagnosticReport", status_code=201)
async def create_report(
    request: Request,
    principal: Annotated[Principal, requires(TYPE, "create")],
    if_none_exist: Annotated[str | None, Header()] = None,
) -> Response:
    check_format(request)
    data = await json_body(request)
    made = report_submission(request, data, None, if_none_exist)
    return await store_one(request, principal, data, made)


@router.put("/DiagnosticReport/{resource_id}")
async def update_report(
    request: Request,
    resource_id: str,
    principal: Annotated[Principal, requires(TYPE, "update")],
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    check_format(request)
    data = await json_body(request)
    check_url_id(data, TYPE, resource_id)
    expected = version_of(if_match) if if_match else None
    made = report_submission(request, data, resource_id, None, expected)
    return await store_one(request, principal, data, made)


@router.get("/DiagnosticReport")
async def search_reports(
    request: Request,
    _: Annotated[Principal, requires(TYPE, "search")],
    search: Annotated[LabSearch, Depends(lab_search)],
) -> FhirResponse:
    """Search by `patient`, `patient:identifier` / `subject:identifier`, `code` (the report's
    LOINC code), `date` (its effective time), `_sort`, `_count`, `_offset` — as for
    Observations."""
    return await search_labs(request, TYPE, search)


add_reads(router, TYPE)
