"""Shared route plumbing: validate with the R4B models, hash (``content_hash``), answer per
`Prefer`, read back."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import Request
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from gateway.fhir.http import (
    FhirError,
    FhirResponse,
    etag,
    fhir_base,
    prefer_return,
    validation_issues,
)
from mappings.fhir.outcome import Issue, operation_outcome
from rems_core.store.fhir_repo import StoredResource

if TYPE_CHECKING:
    from gateway.app.context import UnitContext
from gateway.app.reads import RemsReads
from gateway.app.service import RemsService

BASE = "/fhir"


def service_of(request: Request) -> RemsService:
    """The application service every route that changes something calls."""
    return request.app.state.service


def reads_of(request: Request) -> RemsReads:
    """The service's reads, for routes that decide nothing (read, vread, search, status)."""
    return request.app.state.reads


def context_of(request: Request) -> UnitContext:
    """The rule packs and site time zone the application runs with."""
    return request.app.state.gateway.ctx


def validated(data: dict[str, Any], resource_type: str) -> Any:
    """The R4B model of ``data``, which must be a ``resource_type``; 400/422 otherwise."""
    if data.get("resourceType") != resource_type:
        raise FhirError(
            400,
            "invalid",
            f"expected a {resource_type}, got {data.get('resourceType')!r}",
            ("resourceType",),
        )
    try:
        return get_fhir_model_class(resource_type).model_validate(data)
    except ValidationError as error:
        raise FhirError(422, "invalid", "", issues=validation_issues(error)) from None
    except (TypeError, KeyError, ValueError, AttributeError, LookupError, RecursionError) as exc:
        # fhir.resources fails this way on some shapes (a contained resource of no known type):
        # still a resource that is not valid FHIR R4. Its text may quote the data: not shown.
        raise FhirError(
            422, "invalid", f"the resource is not valid FHIR R4 ({type(exc).__name__})"
        ) from None


def clinical_now(request: Request, data: dict[str, Any] | None = None) -> datetime:
    """The clinical "now": the system clock, or with `serve --clock message` the
    `X-Clinical-Time` header or the resource's meta.lastUpdated (docs/contracts.md §1)."""
    if request.app.state.clock != "message":
        return datetime.now(UTC)
    given, source = request.headers.get("x-clinical-time"), "X-Clinical-Time"
    if not given:
        meta = (data or {}).get("meta")
        given = meta.get("lastUpdated") if isinstance(meta, dict) else None
        source = "meta.lastUpdated"
    if not given:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(str(given).replace("Z", "+00:00"))
    except ValueError:
        raise FhirError(400, "value", f"{source} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise FhirError(400, "value", f"{source} needs a UTC offset")
    return moment.astimezone(UTC)


def check_url_id(data: dict[str, Any], resource_type: str, resource_id: str) -> None:
    """An update's body names the resource of its URL (400 otherwise)."""
    if data.get("id") != resource_id:
        raise FhirError(
            400, "invalid", "the resource's id must be the id in the URL", (f"{resource_type}.id",)
        )


def id_taken(resource_type: str, resource_id: str | None) -> FhirError:
    """409: an update to an id that another client (or the gateway) created."""
    whose = "a registry patient's" if resource_type == "Patient" else "the gateway's"
    where = f"{resource_type}/{resource_id}" if resource_id else f"this {resource_type}"
    return FhirError(
        409,
        "conflict",
        f"{where}: the id is another client's or {whose} (ids are one space per gateway)",
        (f"{resource_type}.id",),
    )


def location(stored: StoredResource) -> str:
    return f"{BASE}/{stored.resource_type}/{stored.id}/_history/{stored.version_id}"


def resource_headers(stored: StoredResource) -> dict[str, str]:
    return {
        "ETag": etag(stored.version_id),
        "Last-Modified": format_datetime(stored.last_updated.astimezone(UTC), usegmt=True),
    }


def written(
    request: Request, stored: StoredResource, created: bool, issues: list[Issue]
) -> FhirResponse:
    """The answer to a create or update, as `Prefer: return=` asks."""
    headers = resource_headers(stored) | {"Location": location(stored)}
    status = 201 if created else 200
    match prefer_return(request):
        case "minimal":
            return FhirResponse(None, status, headers=headers)
        case "OperationOutcome":
            return FhirResponse(operation_outcome(issues), status, headers=headers)
        case _:
            return FhirResponse(stored.body, status, headers=headers)


def read_response(stored: StoredResource | None, resource_type: str, what: str) -> FhirResponse:
    if stored is None:
        raise FhirError(404, "not-found", f"{resource_type}/{what} is not known")
    return FhirResponse(stored.body, 200, headers=resource_headers(stored))


def route_path(request: Request) -> str:
    """The request's path under the FHIR base: `/Observation`, `/Patient/p-1/$rems-status`."""
    path = request.url.path
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.removeprefix(BASE)


def absolute(request: Request, path: str) -> str:
    """``path`` (`/Observation/lab-1`, under the FHIR base) as an absolute URL: under
    `public_base_url` when the gateway has one, else the request's own base URL."""
    return fhir_base(request) + path


def searchset(
    request: Request,
    used: list[tuple[str, str]],
    found: list[StoredResource],
    total: int,
    offset: int,
    count: int,
) -> FhirResponse:
    """A searchset Bundle of ``found``; ``used``: the search parameters it honoured (its self
    link names those only), ``offset``/``count`` the page (`next` and `previous` links)."""
    entries = [(r.resource_type, r.id, r.body) for r in found]
    return FhirResponse(search_bundle(request, used, entries, total, offset, count), 200)


def search_bundle(
    request: Request,
    used: list[tuple[str, str]],
    entries: list[tuple[str, str, dict[str, Any]]],
    total: int,
    offset: int = 0,
    count: int | None = None,
) -> dict[str, Any]:
    """The searchset of ``entries`` (type, id, resource), with absolute `fullUrl`s and `self`,
    `next` and `previous` links (``count`` None: one page holds everything)."""
    here = absolute(request, route_path(request))

    def url(params: list[tuple[str, str]]) -> str:
        return f"{here}?{urlencode(params)}" if params else here

    links = [{"relation": "self", "url": url(used)}]
    if count:  # `_count=0` asks for the total only: no page to go to
        kept = [(k, v) for k, v in used if k != "_offset"]
        if offset + count < total:
            following = [*kept, ("_offset", str(offset + count))]
            links.append({"relation": "next", "url": url(following)})
        if offset > 0:
            back = max(offset - count, 0)
            previous = [*kept, ("_offset", str(back))] if back else kept
            links.append({"relation": "previous", "url": url(previous)})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [
            {
                "fullUrl": absolute(request, f"/{resource_type}/{resource_id}"),
                "resource": body,
                "search": {"mode": "match"},
            }
            for resource_type, resource_id, body in entries
        ],
    }


#: One small valid resource per type the endpoint takes: validating each once at start-up makes
#: fhir.resources import and build every nested model then, not during the first requests.
WARM_UP: dict[str, dict[str, Any]] = {
    "Observation": {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:warm-up", "value": "1"}],
        "status": "final",
        "category": [{"coding": [{"system": "urn:warm-up", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]},
        "subject": {"identifier": {"system": "urn:warm-up", "value": "1"}},
        "effectiveDateTime": "2022-01-01T00:00:00Z",
        "specimen": {"identifier": {"system": "urn:warm-up", "value": "1"}},
        "valueQuantity": {"value": 1, "system": "http://unitsofmeasure.org", "code": "/uL"},
    },
    "MedicationRequest": {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": "urn:warm-up", "code": "outpatient"}]}],
        "medicationCodeableConcept": {"coding": [{"system": "urn:warm-up", "code": "1"}]},
        "subject": {"reference": "Patient/1"},
        "requester": {"identifier": {"system": "urn:warm-up", "value": "1"}},
        "dispenseRequest": {
            "performer": {"identifier": {"system": "urn:warm-up", "value": "1"}},
            "expectedSupplyDuration": {"value": 1, "system": "http://unitsofmeasure.org"},
        },
    },
    "QuestionnaireResponse": {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "subject": {"reference": "Patient/1"},
        "item": [{"linkId": "1", "answer": [{"valueString": "x"}]}],
    },
    "Bundle": {"resourceType": "Bundle", "type": "batch", "entry": []},
    "OperationOutcome": {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid"}],
    },
}


def warm_up() -> None:
    for resource_type, sample in WARM_UP.items():
        get_fhir_model_class(resource_type).model_validate(sample)
