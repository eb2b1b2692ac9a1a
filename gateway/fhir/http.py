"""FHIR over HTTP: media types, `_format`, `Prefer`, ETags, and OperationOutcome errors."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import ValidationError

from mappings.fhir.outcome import Issue, operation_outcome

FHIR_JSON = "application/fhir+json"
JSON_TYPES = {FHIR_JSON, "application/json", "application/json+fhir"}
FORMATS = {"json", *JSON_TYPES}
FHIR_VERSION = "4.0.1"


class FhirError(Exception):
    """An error answered as an OperationOutcome with its HTTP status."""

    def __init__(
        self,
        status: int,
        code: str,
        diagnostics: str,
        expression: Iterable[str] = (),
        headers: Mapping[str, str] | None = None,
        rems_code: str | None = None,
        issues: list[Issue] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.issues = issues or [Issue("error", code, diagnostics, tuple(expression), rems_code)]
        self.headers = headers


class FhirResponse(Response):
    media_type = f"{FHIR_JSON}; charset=utf-8"

    def render(self, content: Any) -> bytes:
        if content is None:  # Prefer: return=minimal
            return b""
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def error_response(error: FhirError) -> FhirResponse:
    return FhirResponse(operation_outcome(error.issues), error.status, headers=error.headers)


def check_format(request: Request) -> None:
    """Only JSON is offered: `_format` or `Accept` asking for anything else gets 406."""
    wanted = request.query_params.get("_format")
    if wanted is not None and wanted.split(";")[0].strip().lower() not in FORMATS:
        raise FhirError(406, "not-supported", f"_format {wanted!r}: only JSON is supported")
    accept = request.headers.get("accept")
    if wanted is None and accept and not _accepts_json(accept):
        raise FhirError(406, "not-supported", "only application/fhir+json can be returned")


def _accepts_json(accept: str) -> bool:
    types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return bool(types & (JSON_TYPES | {"*/*", "application/*"}))


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, or a 415/400 OperationOutcome."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in JSON_TYPES:
        raise FhirError(
            415, "not-supported", f"send {FHIR_JSON} (got {media_type or 'no content type'})"
        )
    try:
        data = decode_json(await request.body(), request.app.state.settings.json_max_depth)
    except JsonRefused as refused:
        raise FhirError(400, "structure", str(refused)) from None
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise FhirError(400, "structure", "the body is not a FHIR resource (no resourceType)")
    where = control_character_at(data)
    if where is not None:
        raise FhirError(400, "value", "a string holds a control character", (where,))
    return data


FORBIDDEN = frozenset(chr(c) for c in range(32)) - {"\t", "\n", "\r"}


def control_character_at(data: Any) -> str | None:
    """Where a string (or a key) holds a character FHIR strings may not (below U+0020 but
    tab, CR and LF: a NUL, say), as a path like ``identifier.0.value``; None when none does."""
    pending: list[tuple[Any, str]] = [(data, "")]
    while pending:
        value, path = pending.pop()
        if isinstance(value, str) and not FORBIDDEN.isdisjoint(value):
            return path or "$this"
        if isinstance(value, dict):
            for key, child in value.items():
                if not FORBIDDEN.isdisjoint(key):
                    return path or "$this"
                pending.append((child, f"{path}.{key}" if path else key))
        elif isinstance(value, list):
            pending.extend((child, f"{path}.{i}") for i, child in enumerate(value))
    return None


class JsonRefused(ValueError):
    """A body that is not JSON, or nested deeper than the limit; the text names no value."""


def decode_json(body: bytes, max_depth: int) -> Any:
    """The JSON value of ``body``, nested at most ``max_depth`` objects and arrays deep."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise JsonRefused(f"the body is nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise JsonRefused(f"the body is not valid JSON{where}") from None
    if json_depth(data, max_depth) > max_depth:
        raise JsonRefused(f"the body is nested deeper than {max_depth} levels")
    return data


def json_depth(data: Any, limit: int) -> int:
    """How deep ``data`` nests objects and arrays (a scalar is 0); stops counting past ``limit``."""
    deepest, pending = 0, [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            children: Iterable[Any] = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, depth)
        if depth > limit:
            return deepest
        pending.extend((child, depth + 1) for child in children)
    return deepest


def validation_issues(error: ValidationError) -> list[Issue]:
    """fhir.resources' validation errors as issues with FHIRPath-like expressions; the offending
    values are never echoed (they may be PHI)."""
    issues = []
    for problem in error.errors(include_input=False, include_url=False):
        path = ".".join(str(p) for p in problem["loc"] if not str(p).startswith("function-"))
        issues.append(Issue("error", "invalid", problem["msg"], (path,) if path else ()))
    return issues or [Issue("error", "invalid", "the resource is not valid FHIR R4")]


def prefer_return(request: Request) -> str:
    """`Prefer: return=minimal | representation | OperationOutcome` (default representation)."""
    for part in request.headers.get("prefer", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "return":
            choice = value.strip().strip('"')
            if choice in ("minimal", "representation", "OperationOutcome"):
                return choice
    return "representation"


def _preferences(request: Request) -> list[tuple[str, str]]:
    """The `Prefer` header's preferences (`return=…`, `handling=…`), in order."""
    found = []
    for part in request.headers.get("prefer", "").replace(",", ";").split(";"):
        key, _, value = part.strip().partition("=")
        if key.strip():
            found.append((key.strip().lower(), value.strip().strip('"')))
    return found


def prefer_lenient(request: Request) -> bool:
    """`Prefer: handling=lenient`: a search ignores the parameters it does not know (default
    strict: they are refused)."""
    handling = [value for key, value in _preferences(request) if key == "handling"]
    return bool(handling) and handling[-1].lower() == "lenient"


def fhir_base(request: Request) -> str:
    """The FHIR base absolute URLs of answers start with: `public_base_url` + `/fhir` when the
    gateway has one, else the base URL the request came in on."""
    configured = request.app.state.settings.public_base_url
    return (configured or str(request.base_url)).rstrip("/") + "/fhir"


def etag(version_id: int) -> str:
    return f'W/"{version_id}"'


def version_of(if_match: str) -> int:
    """The version an `If-Match: W/"3"` names; 400 when it names none (an update must not
    quietly become unconditional)."""
    text = if_match.strip()
    text = text[2:] if text.startswith("W/") else text
    text = text.strip('"')
    if not text.isdigit():
        raise FhirError(400, "value", 'If-Match must name a version, e.g. W/"3"', ("If-Match",))
    return int(text)
