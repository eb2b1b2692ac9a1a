"""`POST /fhir/GuidanceResponse/$rems-etasu`: are the REMS requirements (ETASU) met?

A read-only check, on purpose: it records nothing, issues no RDA and spends no pharmacist
override, so an EHR may ask as often as it likes. A case number (RDA number or decision id), or a
medicationRequest whose request id was decided already, reports that recorded decision; anything
else is judged by the same engine as a dispense, on the committed patient file. Scope:
`system/GuidanceResponse.r` (the operation reads, it never writes).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request

from gateway import fhir_dispense
from gateway.fhir.auth import Principal, requires
from gateway.fhir.http import FhirError, FhirResponse, check_format, json_body
from gateway.fhir.resources import clinical_now, validated
from gateway.fhir_dispense import EtasuCheck
from gateway.service import RemsService
from mappings.fhir.etasu import EtasuQuery, etasu_parameters, read_etasu_parameters
from rems_core.model import Identifier
from rems_core.store.repo import Store

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
    service: RemsService = request.app.state.service
    moment = query.request.dispense_date if query.request is not None else now
    pack = service.pack_for(moment)  # the pack a dispense on that date would be judged by
    check, patient_id = await service.read(lambda store: _check(service, store, query, pack))
    return FhirResponse(etasu_parameters(check, query.missing, patient_id), 200)


def _check(
    service: RemsService, store: Store, query: EtasuQuery, pack: Any
) -> tuple[EtasuCheck, str | None]:
    if query.case_number is not None:
        check = fhir_dispense.stored_decision(store, query.case_number)
        return check, check.decision.patient if check.decision else None
    assert query.subject is not None and query.request is not None
    identifiers: list[Identifier] = list(query.subject.identifiers)
    if query.subject.patient_id is not None:
        patient = store.patient(query.subject.patient_id)
        if patient is None:
            raise FhirError(
                422, "not-found", "patient names a Patient the gateway does not know", ("patient",)
            )
        identifiers = list(patient.identifiers)
    check = fhir_dispense.check_etasu(service, store, identifiers, query.request, pack)
    return check, check.decision.patient if check.decision else None
