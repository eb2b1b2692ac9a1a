"""`POST /cds-services/{id}/feedback` (docs/contracts.md §6): what the user did with the cards.

`accepted` is recorded; `overridden` with a reason on a rationale-required card becomes the
prescriber's rationale on the patient's PSF draft, pending the prescriber's signature. Each
(card, outcome, outcomeTimestamp) is recorded once; a card the service did not answer is 404.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.app.errors import UnknownCard
from gateway.app.values import CardFeedback, Source
from gateway.cds.hooks import (
    CHANNEL,
    ERROR_RESPONSES,
    authenticated,
    hook_body,
    json_request,
    known_service,
)
from gateway.fhir.http import FhirError
from gateway.fhir.resources import service_of
from mappings.cds.cards import OVERRIDE_REASONS, OVERRIDE_SYSTEM

router = APIRouter(tags=["CDS Hooks"])
OUTCOMES = ("accepted", "overridden")
#: CDS Hooks 3.0's non-adherence reasons: risk-benefit-ratio is a rationale too.
NON_ADHERENCE_SYSTEM = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"
MAX_ITEMS = 100
FEEDBACK_REQUEST = json_request(
    {
        "type": "object",
        "required": ["feedback"],
        "properties": {"feedback": {"type": "array", "items": {"type": "object"}}},
    }
)


@router.post(
    "/cds-services/{service_id}/feedback",
    responses={200: {"description": "Recorded (no body)"}, **ERROR_RESPONSES},
    openapi_extra=FEEDBACK_REQUEST,
)
async def feedback(request: Request, service_id: str) -> Response:
    service = known_service(service_id)
    client = await authenticated(request, service_id, feedback=True)
    data = await hook_body(request)
    items = read_feedback(data)
    try:
        recorded = await service_of(request).record_feedback(
            service.id, items, Source(CHANNEL, client.iss)
        )
    except UnknownCard as unknown:
        raise FhirError(
            404, "not-found", f"card {unknown} was not answered by {service_id}"
        ) from None
    for item, done in zip(items, recorded, strict=True):
        if done.recorded:
            request.app.state.metrics.count_feedback(item.outcome)
    return Response(status_code=200)


def read_feedback(data: dict[str, Any]) -> list[CardFeedback]:
    given = data.get("feedback")
    if not isinstance(given, list) or not given:
        raise FhirError(400, "required", "feedback is required: a list of outcomes", ("feedback",))
    if len(given) > MAX_ITEMS:
        raise FhirError(400, "too-long", f"at most {MAX_ITEMS} outcomes per call", ("feedback",))
    return [_item(item, f"feedback[{index}]") for index, item in enumerate(given)]


def _item(item: Any, path: str) -> CardFeedback:
    if not isinstance(item, dict):
        raise FhirError(400, "structure", "an outcome is an object", (path,))
    card = item.get("card")
    if not isinstance(card, str) or not card:
        raise FhirError(400, "required", "card (the card's uuid) is required", (f"{path}.card",))
    outcome = item.get("outcome")
    if outcome not in OUTCOMES:
        raise FhirError(
            400, "value", "outcome must be accepted or overridden", (f"{path}.outcome",)
        )
    code, comment = _override(item.get("overrideReason"), f"{path}.overrideReason")
    reason = OVERRIDE_REASONS.get(code)[0] if code in OVERRIDE_REASONS else None
    return CardFeedback(
        card=card,
        outcome=outcome,
        outcome_timestamp=_timestamp(item.get("outcomeTimestamp"), f"{path}.outcomeTimestamp"),
        override_reason=code,
        rationale_reason=reason if outcome == "overridden" else None,
        comment=comment,
        suggestions=_suggestions(item.get("acceptedSuggestions"), f"{path}.acceptedSuggestions"),
    )


def _override(given: Any, path: str) -> tuple[str | None, str]:
    """(reason code, user comment). Codes of our system and CDS Hooks 3.0's are read; another
    system's code is kept as given (recorded, not a rationale)."""
    if given is None:
        return None, ""
    if not isinstance(given, dict):
        raise FhirError(400, "structure", "overrideReason is an object", (path,))
    comment = given.get("userComment") or ""
    if not isinstance(comment, str):
        raise FhirError(400, "value", "userComment is text", (f"{path}.userComment",))
    reason = given.get("reason")
    if reason is None:
        return None, comment
    if not isinstance(reason, dict) or not isinstance(reason.get("code"), str):
        raise FhirError(400, "value", "reason is a Coding with a code", (f"{path}.reason",))
    if reason.get("system") in (OVERRIDE_SYSTEM, NON_ADHERENCE_SYSTEM):
        return reason["code"], comment
    return f"{reason.get('system') or ''}|{reason['code']}", comment


def _timestamp(given: Any, path: str) -> datetime:
    if not isinstance(given, str):
        raise FhirError(400, "required", "outcomeTimestamp is required", (path,))
    try:
        moment = datetime.fromisoformat(given.replace("Z", "+00:00"))
    except ValueError:
        raise FhirError(400, "value", "outcomeTimestamp is not an ISO 8601 time", (path,)) from None
    if moment.tzinfo is None:
        raise FhirError(400, "value", "outcomeTimestamp needs a UTC offset", (path,))
    return moment.astimezone(UTC)


def _suggestions(given: Any, path: str) -> tuple[str, ...]:
    if given is None:
        return ()
    if not isinstance(given, list) or not all(
        isinstance(s, dict) and isinstance(s.get("id"), str) for s in given
    ):
        raise FhirError(400, "structure", "acceptedSuggestions is a list of {id}", (path,))
    return tuple(s["id"] for s in given)
