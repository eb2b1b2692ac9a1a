"""`POST /fhir/GuidanceResponse/$rems-etasu`: are the REMS requirements (ETASU) met? And
`GET /fhir/GuidanceResponse/{decision id}`: a recorded decision (the focus of decision
notifications, docs/contracts.md §7).

A read-only check, on purpose: it records nothing, issues no RDA and spends no pharmacist
override, so an EHR may ask as often as it likes. A case number (RDA number or decision id), or a
medicationRequest whose request id was decided already, reports that recorded decision; anything
else is judged by the same engine as a dispense, on the committed patient file. Scope:
`system/GuidanceResponse.r` (the operation reads, it never writes).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request

from gateway.app.errors import UnknownPatient
from gateway.fhir.auth import Principal, requires
from gateway.fhir.http import FhirError, FhirResponse, check_format, json_body
from gateway.fhir.resources import clinical_now, reads_of, validated
from mappings.fhir.etasu import etasu_parameters, read_etasu_parameters

router = APIRouter(tags=["GuidanceResponse"])


@router.post("/GuidanceResponse/$rems-etasu")
async def rems_etasu(
    request: Request, _: Annotated[Principal, requires("GuidanceResponse", "read")]
) -> FhirResponse:
    check_format(request)
    data = await json_body(request)
    now = clinical_now(request, data)
    query = read_etasu_parameters(validated(data, "Parameters"), now)
    if query.problems:
        raise FhirError(422, "invalid", "", issues=query.problems)
    try:
        check = await reads_of(request).check_etasu(query)
    except UnknownPatient:
        raise FhirError(
            422, "not-found", "patient names a Patient the gateway does not know", ("patient",)
        ) from None
    patient_id = check.decision.patient if check.decision else None
    return FhirResponse(etasu_parameters(check, query.missing, patient_id), 200)


@router.get("/GuidanceResponse/{decision_id}")
async def read_guidance_response(
    request: Request,
    decision_id: str,
    _: Annotated[Principal, requires("GuidanceResponse", "read")],
) -> FhirResponse:
    """The recorded decision as a GuidanceResponse (its status as `$rems-etasu` reports it)."""
    check_format(request)
    found = await reads_of(request).decision_response(decision_id)
    if found is None:
        raise FhirError(404, "not-found", f"GuidanceResponse/{decision_id} is not known")
    return FhirResponse(found, 200)
