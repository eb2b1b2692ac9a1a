"""MedicationRequest: create (a dispense decision), read, vread.

The stored resource carries the decision as the extension `urn:rems-gateway:fhir:rems-decision`;
`Prefer: return=OperationOutcome` answers it as issues (mappings/fhir/medication_request.py).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.app.errors import RequestConflict
from gateway.app.values import DispenseRecorded, DispenseSubmission, ResourceDraft, Source
from gateway.fhir.auth import Principal, requires
from gateway.fhir.http import FhirError, check_format, json_body
from gateway.fhir.reads import add_reads
from gateway.fhir.resources import clinical_now, content_hash, service_of, validated, written
from mappings.fhir.medication_request import decision_issues, read_medication_request
from mappings.fhir.outcome import Issue
from rems_core.store.fhir_repo import ResourceIndex

router = APIRouter(tags=["MedicationRequest"])
TYPE = "MedicationRequest"


async def decide(
    request: Request, submission: DispenseSubmission, source: Source
) -> DispenseRecorded:
    try:
        done = await service_of(request).record_medication_request(submission, source)
    except RequestConflict:
        raise FhirError(
            409, "conflict", "this identifier (request id) was used for another request"
        ) from None
    if done.recorded is None:
        raise FhirError(
            422,
            "not-found",
            "subject names a Patient the gateway does not know",
            ("MedicationRequest.subject",),
        )
    return done


@router.post("/MedicationRequest", status_code=201)
async def create_medication_request(
    request: Request, principal: Annotated[Principal, requires(TYPE, "create")]
) -> Response:
    """Decide a clozapine dispense (docs/rules.md §6) and store the request with its decision."""
    check_format(request)
    data = await json_body(request)
    now = clinical_now(request, data)
    found = read_medication_request(validated(data, TYPE), now)
    if found.request is None or found.subject is None:
        raise FhirError(422, "invalid", "", issues=found.problems)
    draft = ResourceDraft(
        TYPE,
        data,
        content_hash(data),
        ResourceIndex(identifier=found.identifier, code=found.request.drug, effective=now),
    )
    submission = DispenseSubmission(
        draft, found.subject.identifiers, found.subject.patient_id, found.request
    )
    done = await decide(request, submission, Source("fhir", principal.client_id))
    assert done.recorded is not None and done.decision is not None
    issues = decision_issues(done.decision)
    if done.recorded.unchanged:
        issues.append(Issue("information", "informational", "already stored: not decided again"))
    return written(request, done.recorded.resource, done.recorded.created, issues)


add_reads(router, TYPE)
