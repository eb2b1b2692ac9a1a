"""MedicationDispense: create (a dispense recorded against its RDA), read, vread.

A dispense the RDA does not allow (already dispensed, voided, expired, more days than it
authorizes) is still stored — it is the pharmacy's record of what happened, and a pharmacist must
see it — and answered `201` with the outcome `refused` and the RDA_* reasons as error issues; the
stored resource carries the outcome as the extension `urn:rems-gateway:fhir:dispense-outcome`
(mappings/fhir/medication_dispense.py).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.app.values import MedicationDispenseSubmission, ResourceDraft, Source
from gateway.fhir.auth import Principal, requires
from gateway.fhir.http import FhirError, check_format, json_body
from gateway.fhir.reads import add_reads
from gateway.fhir.resources import clinical_now, service_of, validated, written
from mappings.fhir.content import content_hash
from mappings.fhir.medication_dispense import dispense_issues, read_medication_dispense
from mappings.fhir.outcome import Issue
from rems_core.store.fhir_repo import ResourceIndex

router = APIRouter(tags=["MedicationDispense"])
TYPE = "MedicationDispense"


@router.post("/MedicationDispense", status_code=201)
async def create_medication_dispense(
    request: Request, principal: Annotated[Principal, requires(TYPE, "create")]
) -> Response:
    """Record a dispense against the RDA its authorizingPrescription names (docs/rules.md §6.4)."""
    check_format(request)
    data = await json_body(request)
    now = clinical_now(request, data)
    found = read_medication_dispense(validated(data, TYPE), now)
    if found.record is None:
        raise FhirError(422, "invalid", "", issues=found.problems)
    index = ResourceIndex(
        identifier=found.identifier, code=found.record.drug, effective=found.record.dispensed_at
    )
    draft = ResourceDraft(TYPE, data, content_hash(data), index)
    submission = MedicationDispenseSubmission(draft, found.record, found.prescription)
    source = Source("fhir", principal.client_id)
    done = await service_of(request).record_medication_dispense(submission, source)
    issues = dispense_issues(done.filed)
    if done.recorded.unchanged:
        issues.append(Issue("information", "informational", "already stored: not recorded again"))
    return written(request, done.recorded.resource, done.recorded.created, issues)


add_reads(router, TYPE)
