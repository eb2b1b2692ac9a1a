"""Subscription (R4, topic-based as the Subscriptions R5 Backport IG defines it; docs/contracts.md
§7): create, update (`off` stops delivery), read, vread, search by `status`, and
`Subscription/{id}/$status`. The server sets the status: `requested` until the handshake is
delivered, then `active`; `error` after a notification was dead-lettered."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from gateway.app.errors import ClientIdTaken, VersionConflict
from gateway.app.values import ResourceDraft, Source, SubscriptionSubmission
from gateway.fhir import capability
from gateway.fhir.auth import Principal, requires
from gateway.fhir.http import FhirError, FhirResponse, check_format, json_body, version_of
from gateway.fhir.reads import add_reads
from gateway.fhir.resources import (
    absolute,
    check_url_id,
    clinical_now,
    id_taken,
    reads_of,
    route_path,
    searchset,
    service_of,
    validated,
    written,
)
from gateway.fhir.search import search_parameters
from mappings.fhir.content import content_hash
from mappings.fhir.outcome import Issue
from mappings.fhir.subscription import (
    ACTIVE,
    ERROR,
    OFF,
    REQUESTED,
    SubscriptionState,
    read_subscription,
    status_bundle,
)
from rems_core.store.fhir_repo import ResourceIndex

router = APIRouter(tags=["Subscription"])
TYPE = "Subscription"
STATUSES = (REQUESTED, ACTIVE, ERROR, OFF)
SEARCH = ("status",)
STATUS_OPERATION = (
    "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status"
)

capability.declare(
    TYPE,
    ["create", "update", "read", "vread", "search-type"],
    search=SEARCH,
    operations=(("status", STATUS_OPERATION),),
    update_create=True,
)


def subscription_submission(
    data: dict[str, Any], resource_id: str | None = None, if_match: str | None = None
) -> SubscriptionSubmission:
    """A Subscription as received; 400/422 naming the element when it cannot be delivered."""
    validated(data, TYPE)
    read = read_subscription(data)
    if read.spec is None:
        raise FhirError(422, "invalid", "", issues=read.problems)
    draft = ResourceDraft(
        TYPE,
        data,
        content_hash(data),
        ResourceIndex(),
        resource_id=resource_id,
        if_match=version_of(if_match) if if_match else None,
    )
    return SubscriptionSubmission(draft, read.spec)


async def store_subscription(
    request: Request, principal: Principal, data: dict[str, Any], made: SubscriptionSubmission
) -> Response:
    source = Source("fhir", principal.client_id)
    now = clinical_now(request, data)
    try:
        done = await service_of(request).record_subscription(made, source, now)
    except ClientIdTaken:
        raise id_taken(TYPE, made.draft.resource_id) from None
    except VersionConflict:
        raise FhirError(
            412, "conflict", "If-Match names another version than the current one"
        ) from None
    issues = []
    if done.unchanged:
        issues.append(Issue("information", "informational", "already stored: not stored again"))
    return written(request, done.resource, done.created, issues)


@router.post("/Subscription", status_code=201)
async def create_subscription(
    request: Request, principal: Annotated[Principal, requires(TYPE, "create")]
) -> Response:
    """A Subscription to a topic: `requested`, and a handshake is sent to its endpoint."""
    check_format(request)
    data = await json_body(request)
    return await store_subscription(request, principal, data, subscription_submission(data))


@router.put("/Subscription/{resource_id}")
async def update_subscription(
    request: Request,
    resource_id: str,
    principal: Annotated[Principal, requires(TYPE, "update")],
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The next version (`off` stops delivery; a new channel shakes hands again), or a
    Subscription created with the client's id."""
    check_format(request)
    data = await json_body(request)
    check_url_id(data, TYPE, resource_id)
    made = subscription_submission(data, resource_id, if_match)
    return await store_subscription(request, principal, data, made)


@router.get("/Subscription/{resource_id}/$status")
async def subscription_status(
    request: Request, resource_id: str, _: Annotated[Principal, requires(TYPE, "read")]
) -> FhirResponse:
    """The SubscriptionStatus (`query-status`) of one Subscription, in a searchset Bundle."""
    check_format(request)
    row = await reads_of(request).subscription(resource_id)
    if row is None:
        raise FhirError(404, "not-found", f"{TYPE}/{resource_id} is not known")
    state = SubscriptionState(row["id"], row["topic"], row["status"], row["events"])
    return FhirResponse(status_bundle(state, absolute(request, route_path(request))), 200)


@router.get("/Subscription")
async def search_subscriptions(
    request: Request,
    _: Annotated[Principal, requires(TYPE, "search")],
    status: str | None = None,
) -> FhirResponse:
    """Every Subscription, or those of one `status`."""
    check_format(request)
    used = search_parameters(request, SEARCH)
    if status is not None and status not in STATUSES:
        raise FhirError(400, "value", f"status is one of {', '.join(STATUSES)}", ("status",))
    found = await reads_of(request).subscriptions(status)
    return searchset(request, used, found, len(found), 0, len(found))


add_reads(router, TYPE)
