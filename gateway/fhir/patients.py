"""Patient: read and search (`identifier=system|value`) of registry patients, and
`Patient/{id}/$rems-status` — the patient's REMS status at the clinical now."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request

from gateway.fhir.auth import Principal, requires
from gateway.fhir.http import FhirError, FhirResponse, check_format
from gateway.fhir.resources import BASE, clinical_now, reads_of
from gateway.fhir.search import identifier_param
from mappings.fhir.patient import patient_resource, rems_status_parameters
from rems_core.model import Identifier

router = APIRouter(tags=["Patient"])
TYPE = "Patient"


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
    if record is None:
        raise FhirError(404, "not-found", f"Patient/{patient_id} is not known")
    return FhirResponse(patient_resource(record), 200)


@router.get("/Patient")
async def search_patients(
    request: Request,
    _: Annotated[Principal, requires(TYPE, "search")],
    identifier: str | None = None,
) -> FhirResponse:
    """By `identifier=system|value` only: the registry is not listed whole."""
    check_format(request)
    if identifier is None:
        raise FhirError(
            400, "not-supported", "search Patient by identifier=system|value", ("identifier",)
        )
    system, value = identifier_param(identifier)
    record = await reads_of(request).patient_by_identifier(Identifier(system, value))
    found = [patient_resource(record)] if record is not None else []
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(found),
        "link": [{"relation": "self", "url": str(request.url)}],
        "entry": [
            {"fullUrl": f"{BASE}/Patient/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in found
        ],
    }
    return FhirResponse(bundle, 200)
