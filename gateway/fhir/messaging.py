"""FHIR messaging (docs/contracts.md §5): `POST /fhir/$process-message` takes a `message` Bundle
(its first entry the MessageHeader), stores its entries as a collection's, and answers with a
response message: a MessageHeader whose `response` names the request's header and says `ok`
(every entry taken), `fatal-error` (an entry refused: sending it again unchanged will not help)
or `transient-error` (the store cannot take it now: send it again later), with an
OperationOutcome of the findings."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Request

from gateway.app.writer import RETRY_AFTER_SECONDS, store_unavailable
from gateway.fhir import capability
from gateway.fhir.auth import Principal, requires
from gateway.fhir.bundle_entries import bundle_entries, bundle_kind
from gateway.fhir.bundles import entry_issues, store_entries
from gateway.fhir.http import FhirError, FhirResponse, check_format, fhir_base, json_body
from gateway.fhir.resources import clinical_now
from mappings.fhir.outcome import Issue, operation_outcome

router = APIRouter(tags=["$process-message"])
HEADER = "MessageHeader"
PROCESS_MESSAGE = (
    "process-message",
    "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message",
)
UNAVAILABLE = Issue(
    "error", "transient", "the store cannot take the message now: nothing of it was stored"
)

capability.declare_system(operations=(PROCESS_MESSAGE,))


def request_header(data: dict[str, Any]) -> dict[str, Any]:
    """The message's MessageHeader: its first entry (FHIR messaging)."""
    entries = data.get("entry")
    first = entries[0] if isinstance(entries, list) and entries else None
    header = first.get("resource") if isinstance(first, dict) else None
    if not isinstance(header, dict) or header.get("resourceType") != HEADER:
        raise FhirError(
            400, "structure", "a message's first entry is its MessageHeader", ("Bundle.entry[0]",)
        )
    if not isinstance(header.get("id"), str):
        raise FhirError(
            400,
            "required",
            "the MessageHeader needs an id (the response names it)",
            ("Bundle.entry[0].resource.id",),
        )
    return header


@router.post("/$process-message")
async def process_message(
    request: Request, principal: Annotated[Principal, requires(HEADER, "create")]
) -> FhirResponse:
    """A message Bundle: its entries stored and understood; a response message back."""
    check_format(request)
    data = await json_body(request)
    bundle_kind(data, ("message",))
    header = request_header(data)
    entries = bundle_entries(data, "message")
    try:
        answers, _ = await store_entries(
            request, principal, entries, "message", clinical_now(request, data)
        )
    except Exception as exc:
        if not store_unavailable(exc):
            raise
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        answer = response_message(request, header, "transient-error", [UNAVAILABLE])
        return FhirResponse(answer, 503, headers=headers)
    code = "ok" if all(a.status < 400 for a in answers) else "fatal-error"
    return FhirResponse(response_message(request, header, code, entry_issues(answers)), 200)


def response_message(
    request: Request, header: dict[str, Any], code: str, issues: list[Issue]
) -> dict[str, Any]:
    """The response: our MessageHeader (`response.identifier` the request header's id) and
    the OperationOutcome its `response.details` names."""
    outcome_url = f"urn:uuid:{uuid.uuid4()}"
    ours: dict[str, Any] = {
        "resourceType": HEADER,
        "id": str(uuid.uuid4()),
        "source": {"name": "rems-gateway", "endpoint": fhir_base(request)},
        "response": {
            "identifier": header["id"],
            "code": code,
            "details": {"reference": outcome_url},
        },
    }
    for event in ("eventCoding", "eventUri"):
        if event in header:
            ours[event] = header[event]
    source = header.get("source")
    if isinstance(source, dict) and source.get("endpoint"):
        ours["destination"] = [{"endpoint": source["endpoint"], "name": source.get("name")}]
        ours["destination"] = [{k: v for k, v in d.items() if v} for d in ours["destination"]]
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "message",
        "timestamp": datetime.now(UTC).isoformat(),
        "entry": [
            {"fullUrl": f"urn:uuid:{ours['id']}", "resource": ours},
            {"fullUrl": outcome_url, "resource": operation_outcome(issues)},
        ],
    }
