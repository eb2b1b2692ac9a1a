"""MedicationRequest: create (a dispense decision), update (its end), read, vread.

The stored resource carries the decision as the extension `urn:rems-gateway:fhir:rems-decision`;
`Prefer: return=OperationOutcome` answers it as issues (mappings/fhir/medication_request.py). An
update is taken only as the order's end: `status` `cancelled` or `stopped` voids the decision's
RDA, and the new version keeps the original's decision (an update is no new dispense check).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from gateway.app.errors import RequestConflict, UnknownResource, VersionConflict
from gateway.app.values import (
    DispenseRecorded,
    DispenseSubmission,
    MedicationRequestEnd,
    OrderEnded,
    ResourceDraft,
    Source,
)
from gateway.fhir.auth import Principal, requires
from gateway.fhir.http import FhirError, check_format, json_body, version_of
from gateway.fhir.reads import add_reads
from gateway.fhir.resources import check_url_id, clinical_now, service_of, validated, written
from mappings.fhir.content import content_hash
from mappings.fhir.medication_dispense import ENDS
from mappings.fhir.medication_request import (
    decision_issues,
    read_medication_request,
    request_id,
)
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
    model = validated(data, TYPE)
    action = ENDS.get(str(model.status))
    if action is not None:  # the end of the order its identifier names, never a new check
        end = MedicationRequestEnd(None, _draft(data, model), now, action)
        return await _end(request, end, principal)
    found = read_medication_request(model, now)
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


@router.put("/MedicationRequest/{resource_id}")
async def end_medication_request(
    request: Request,
    resource_id: str,
    principal: Annotated[Principal, requires(TYPE, "update")],
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    """`status` `cancelled` or `stopped`: the order ends and its RDA is voided."""
    check_format(request)
    data = await json_body(request)
    check_url_id(data, TYPE, resource_id)
    now = clinical_now(request, data)
    model = validated(data, TYPE)
    action = ENDS.get(str(model.status))
    if action is None:
        raise FhirError(
            422,
            "business-rule",
            "an update is taken only as the order's end (status cancelled or stopped); "
            "a new order is a new MedicationRequest",
            (f"{TYPE}.status",),
        )
    draft = replace(_draft(data, model), resource_id=resource_id)
    draft = replace(draft, if_match=version_of(if_match) if if_match else None)
    return await _end(request, MedicationRequestEnd(resource_id, draft, now, action), principal)


def _draft(data: dict[str, Any], model: Any) -> ResourceDraft:
    identifier = request_id(model.identifier)[1]
    return ResourceDraft(TYPE, data, content_hash(data), ResourceIndex(identifier=identifier))


async def _end(request: Request, end: MedicationRequestEnd, principal: Principal) -> Response:
    try:
        done = await service_of(request).end_medication_request(
            end, Source("fhir", principal.client_id)
        )
    except UnknownResource:
        raise FhirError(404, "not-found", f"{TYPE}/{end.resource_id} is not known") from None
    except RequestConflict:
        raise FhirError(
            409, "conflict", "an update may not change the request id (identifier)"
        ) from None
    except VersionConflict:
        raise FhirError(
            412, "conflict", "If-Match names another version than the current one"
        ) from None
    if done.recorded is None:
        (missing,) = done.ended.findings
        issue = Issue("error", "not-found", missing.text, (f"{TYPE}.identifier",), missing.code)
        raise FhirError(422, "not-found", "", issues=[issue])
    return written(request, done.recorded.resource, False, _end_issues(done.ended))


def _end_issues(ended: OrderEnded) -> list[Issue]:
    if ended.rda is None:
        return [Issue("information", "informational", "order ended: no RDA had been issued")]
    state = ended.rda_state.value if ended.rda_state else ""
    text = f"order ended: RDA {ended.rda} " + ("voided" if ended.voided else f"stays {state}")
    return [Issue("information", "informational", text)]


add_reads(router, TYPE)
