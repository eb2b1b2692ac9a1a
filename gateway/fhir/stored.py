"""Resources stored as received (docs/contracts.md §5): every FHIR R4 type without a REMS effect
(Organization, Practitioner, ServiceRequest, Specimen, Provenance, …) can be created, updated
(update-as-create keeps the client's id), read and vread, on its own as in a Bundle. The routes
take the type as a path parameter, so they come after every type's own routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from gateway.app.errors import BundleRefused
from gateway.app.values import Source
from gateway.fhir import capability
from gateway.fhir.auth import INTERACTION_LETTERS, Principal
from gateway.fhir.bundle_entries import Entry, Fallback
from gateway.fhir.bundles import bundle_item, entry_submission, refusal
from gateway.fhir.http import FhirError, FhirResponse, check_format, json_body
from gateway.fhir.resource_types import STORED_AS_RECEIVED
from gateway.fhir.resources import (
    check_url_id,
    clinical_now,
    read_response,
    reads_of,
    service_of,
    written,
)
from gateway.fhir.search import MAX_INT

router = APIRouter(tags=["stored as received"])

for _type in sorted(STORED_AS_RECEIVED):
    capability.declare(_type, ["create", "update", "read", "vread"], update_create=True)


async def _caller(request: Request, resource_type: str, interaction: str) -> Principal:
    if resource_type not in STORED_AS_RECEIVED:
        raise FhirError(404, "not-supported", f"{resource_type} is not a type this server takes")
    principal: Principal = await request.app.state.fhir_auth.principal(request)
    if not principal.allows(resource_type, interaction):
        scope = f"system/{resource_type}.{INTERACTION_LETTERS[interaction]}"
        raise FhirError(403, "forbidden", f"this token does not grant {scope}")
    return principal


async def _store(request: Request, principal: Principal, entry: Entry) -> Response:
    entry_submission(request, entry, entry.resource, entry.resource_id or "new", Fallback())
    item = bundle_item(request, entry, {}, set())
    source = Source("fhir", principal.client_id)
    now = clinical_now(request, entry.resource)
    try:
        done = await service_of(request).record_bundle([item], source, now, atomic=True)
    except BundleRefused as refused:
        raise refusal(entry.resource_type, entry.resource_id, refused.refused[0]) from None
    stored = done.resources[0]
    return written(request, stored.resource, stored.created, [])


@router.post("/{resource_type}", status_code=201)
async def create_resource(request: Request, resource_type: str) -> Response:
    principal = await _caller(request, resource_type, "create")
    check_format(request)
    data = await json_body(request)
    return await _store(request, principal, Entry(0, "POST", resource_type, None, None, data))


@router.put("/{resource_type}/{resource_id}")
async def update_resource(
    request: Request,
    resource_type: str,
    resource_id: str,
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    principal = await _caller(request, resource_type, "update")
    check_format(request)
    data = await json_body(request)
    check_url_id(data, resource_type, resource_id)
    entry = Entry(0, "PUT", resource_type, resource_id, None, data, None, if_match)
    return await _store(request, principal, entry)


@router.get("/{resource_type}/{resource_id}")
async def read_resource(request: Request, resource_type: str, resource_id: str) -> FhirResponse:
    await _caller(request, resource_type, "read")
    check_format(request)
    stored = await reads_of(request).resource(resource_type, resource_id)
    return read_response(stored, resource_type, resource_id)


@router.get("/{resource_type}/{resource_id}/_history/{version_id}")
async def vread_resource(
    request: Request, resource_type: str, resource_id: str, version_id: int
) -> FhirResponse:
    await _caller(request, resource_type, "read")
    check_format(request)
    what = f"{resource_id}/_history/{version_id}"
    if not 1 <= version_id <= MAX_INT:
        return read_response(None, resource_type, what)
    stored = await reads_of(request).resource(resource_type, resource_id, version_id)
    return read_response(stored, resource_type, what)
