"""What /openapi.json (and /docs) says of the FHIR routes: JSON bodies in and out are FHIR
resources, every error is an OperationOutcome. The routes read their bodies themselves (they are
validated with fhir.resources, not with FastAPI), so this is added once, for all of them."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from gateway.fhir.http import FHIR_JSON, FhirResponse

RESOURCE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["resourceType"],
    "properties": {"resourceType": {"type": "string"}},
}
OUTCOME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["resourceType", "issue"],
    "properties": {
        "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
        "issue": {"type": "array", "minItems": 1, "items": {"type": "object"}},
    },
}
ERRORS = {
    400: "Bad request (malformed JSON, wrong resource type, bad parameter)",
    401: "No or invalid access token",
    403: "The token does not grant this interaction",
    404: "Not found",
    406: "Only JSON is offered",
    409: "Conflict (e.g. a request id reused with another body)",
    412: "If-Match names another version",
    415: "Send application/fhir+json",
    422: "Not valid FHIR R4, or not usable for the REMS",
    500: "Internal error",
    503: "Shutting down",
}


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {FHIR_JSON: {"schema": schema}}


def describe_fhir_routes(app: FastAPI) -> None:
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path.startswith("/fhir"):
            _describe(route)
    app.openapi_schema = None


def _describe(route: APIRoute) -> None:
    route.response_class = FhirResponse
    writes = bool(route.methods & {"POST", "PUT"})
    answers = {
        200: {"description": "The resource, or an OperationOutcome (Prefer)"},
        **({201: {"description": "Created"}} if writes else {}),
    }
    responses: dict[int | str, dict[str, Any]] = {
        status: {**answer, "content": _content(RESOURCE_SCHEMA)}
        for status, answer in answers.items()
    }
    responses |= {
        status: {"description": text, "content": _content(OUTCOME_SCHEMA)}
        for status, text in ERRORS.items()
    }
    route.responses = responses | dict(route.responses)
    if writes and route.body_field is None:
        body = {"required": True, "content": _content(RESOURCE_SCHEMA)}
        route.openapi_extra = {"requestBody": body} | dict(route.openapi_extra or {})
