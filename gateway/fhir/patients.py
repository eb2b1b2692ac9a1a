"""Patient: registry patients (read, search by `identifier=system|value`,
`Patient/{id}/$rems-status` — the REMS status at the clinical now) and the Patients clients
create or update (docs/contracts.md §5): stored with the client's id, linked by their
identifiers to a registry patient, so that `Patient/{id}` resolves. Ids are one space per
gateway: an id another client created, or a registry patient's, is 409."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from gateway.app.errors import ClientIdTaken
from gateway.app.values import PatientRecorded, PatientSubmission, ResourceDraft, Source
from gateway.fhir import capability
from gateway.fhir.auth import Principal, requires
from gateway.fhir.http import FhirError, FhirResponse, check_format, json_body
from gateway.fhir.observations import conditional_identifier
from gateway.fhir.resources import (
    check_url_id,
    clinical_now,
    id_taken,
    read_response,
    reads_of,
    search_bundle,
    service_of,
    validated,
    written,
)
from gateway.fhir.search import identifier_param, search_parameters
from mappings.fhir.content import content_hash
from mappings.fhir.outcome import Issue
from mappings.fhir.patient import (
    client_patient_identifiers,
    patient_resource,
    rems_status_parameters,
)
from rems_core.codes import Code
from rems_core.model import Identifier
from rems_core.store.fhir_repo import ResourceIndex

router = APIRouter(tags=["Patient"])
TYPE = "Patient"
SEARCH = ("identifier",)

capability.declare(
    TYPE,
    ["create", "update", "read", "search-type"],
    search=SEARCH,
    conditional_create=True,
    update_create=True,
)


# --- a client's Patients -----------------------------------------------------------------------


def patient_submission(
    data: dict[str, Any], resource_id: str | None = None, if_none_exist: str | None = None
) -> PatientSubmission:
    """A Patient as received (raises FhirError 400/422); PUT names its id, POST gets one."""
    patient = validated(data, TYPE)
    condition = None
    if if_none_exist is not None:
        condition = Identifier(*identifier_param(conditional_identifier(if_none_exist)))
    draft = ResourceDraft(
        TYPE,
        data,
        content_hash(data),
        ResourceIndex(),  # not by identifier: two clients' Patients may carry the same one
        resource_id=resource_id,
        if_none_exist=condition is not None,
    )
    return PatientSubmission(draft, tuple(client_patient_identifiers(patient)), condition)


def patient_issues(done: PatientRecorded) -> list[Issue]:
    """What became of the Patient: linked (and how many held results were filed), ambiguous,
    or not (yet) linked."""
    if done.ambiguous:
        text = "the identifiers name different registry patients: the Patient is linked to none"
        return [Issue("warning", "business-rule", text, rems_code=Code.PATIENT_AMBIGUOUS)]
    if done.patient_id is None:
        text = "no registry patient carries these identifiers: stored, not linked"
        return [Issue("information", "informational", text)]
    text = f"linked to registry patient {done.patient_id}"
    if done.filed:
        text += f"; {len(done.filed)} held result(s) filed"
    issues = [Issue("information", "informational", text)]
    if done.recorded.unchanged:
        issues.append(Issue("information", "informational", "already stored: not stored again"))
    return issues


async def store_patient(
    request: Request, principal: Principal, data: dict[str, Any], made: PatientSubmission
) -> Response:
    source = Source("fhir", principal.client_id)
    try:
        done = await service_of(request).record_patient(made, source, clinical_now(request, data))
    except ClientIdTaken:
        raise id_taken(TYPE, made.draft.resource_id) from None
    stored = done.recorded
    return written(request, stored.resource, stored.created, patient_issues(done))


@router.post("/Patient", status_code=201)
async def create_patient(
    request: Request,
    principal: Annotated[Principal, requires(TYPE, "create")],
    if_none_exist: Annotated[str | None, Header()] = None,
) -> Response:
    """A client's Patient with a new id, linked by its identifiers to a registry patient
    (`If-None-Exist: identifier=system|value` returns a match untouched)."""
    check_format(request)
    data = await json_body(request)
    made = patient_submission(data, None, if_none_exist)
    return await store_patient(request, principal, data, made)


@router.put("/Patient/{patient_id}")
async def update_patient(
    request: Request, patient_id: str, principal: Annotated[Principal, requires(TYPE, "update")]
) -> Response:
    """Upsert with the client's id kept: 201 created, 200 a new version (or the same content
    again, unchanged); 409 for an id another client created or a registry patient's id."""
    check_format(request)
    data = await json_body(request)
    check_url_id(data, "Patient", patient_id)
    return await store_patient(request, principal, data, patient_submission(data, patient_id))


# --- reads -------------------------------------------------------------------------------------


@router.get("/Patient/{patient_id}/$rems-status")
async def rems_status(
    request: Request, patient_id: str, _: Annotated[Principal, requires(TYPE, "read")]
) -> FhirResponse:
    check_format(request)
    status = await reads_of(request).rems_status(patient_id, clinical_now(request))
    if status is None:
        raise FhirError(404, "not-found", f"Patient/{patient_id} is not known")
    return FhirResponse(rems_status_parameters(status), 200)


@router.get("/Patient/{patient_id}")
async def read_patient(
    request: Request, patient_id: str, _: Annotated[Principal, requires(TYPE, "read")]
) -> FhirResponse:
    check_format(request)
    record = await reads_of(request).patient_record(patient_id)
    if record is not None:
        return FhirResponse(patient_resource(record), 200)
    stored = await reads_of(request).resource(TYPE, patient_id)
    return read_response(stored, TYPE, patient_id)


@router.get("/Patient")
async def search_patients(
    request: Request,
    _: Annotated[Principal, requires(TYPE, "search")],
    identifier: str | None = None,
) -> FhirResponse:
    """By `identifier=system|value` only (the registry is not listed whole): the registry
    patient and every client Patient carrying it."""
    check_format(request)
    used = search_parameters(request, SEARCH)
    if identifier is None:
        raise FhirError(
            400, "not-supported", "search Patient by identifier=system|value", ("identifier",)
        )
    system, value = identifier_param(identifier)
    wanted = Identifier(system, value)
    record = await reads_of(request).patient_by_identifier(wanted)
    found = [patient_resource(record)] if record is not None else []
    clients = await reads_of(request).client_patients(wanted)
    found += [c.body for c in clients]
    entries = [(TYPE, str(r["id"]), r) for r in found]
    bundle = search_bundle(request, used, entries, len(entries))
    return FhirResponse(bundle, 200)
