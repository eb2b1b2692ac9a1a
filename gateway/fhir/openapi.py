"""What /openapi.json (and /docs) says of the FHIR routes: bodies in and out are FHIR resources
as application/fhir+json, every error is an OperationOutcome. The routes read their bodies
themselves (validated with fhir.resources, not by FastAPI), so this is said once, for all."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from gateway.fhir.http import FHIR_JSON

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
    400: "Bad request (malformed JSON, nested too deeply, a control character, bad or unknown "
    "parameter)",
    401: "No or invalid access token",
    403: "The token does not grant this interaction",
    404: "Not found",
    406: "Only JSON is offered",
    409: "Conflict (a request id reused with another body; an id another client created)",
    412: "If-Match names another version",
    413: "The body is larger than the limit (http_max_body_bytes)",
    415: "Send application/fhir+json",
    422: "Not valid FHIR R4, or not usable for the REMS",
    500: "Internal error",
    503: "The store is unavailable or the gateway shuts down; see Retry-After",
}


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {FHIR_JSON: {"schema": schema}}


def describe_fhir_routes(app: FastAPI) -> None:
    """Rewrites the /fhir paths of the generated document (FastAPI's own description of them
    would say JSON bodies and HTTPValidationError)."""
    generate = app.openapi

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _described(generate())
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]


def _described(document: dict[str, Any]) -> dict[str, Any]:
    for path, operations in document.get("paths", {}).items():
        if (path == "/fhir" or path.startswith("/fhir/")) and "/.well-known/" not in path:
            for method, operation in operations.items():
                _describe(method.upper(), operation)
    return document


def _describe(method: str, operation: dict[str, Any]) -> None:
    writes = method in ("POST", "PUT")
    answers = {"200": "The resource, or an OperationOutcome (Prefer)"}
    if writes:
        answers["201"] = "Created"
    responses: dict[str, Any] = {
        status: {"description": text, "content": _content(RESOURCE_SCHEMA)}
        for status, text in answers.items()
    }
    responses |= {
        str(status): {"description": text, "content": _content(OUTCOME_SCHEMA)}
        for status, text in ERRORS.items()
    }
    operation["responses"] = responses
    if writes and "requestBody" not in operation:
        operation["requestBody"] = {"required": True, "content": _content(RESOURCE_SCHEMA)}
    elif "requestBody" in operation:
        operation["requestBody"]["content"] = _content(RESOURCE_SCHEMA)
