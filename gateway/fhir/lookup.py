"""The certification lookup (docs/contracts.md §5, docs/rules.md §10): the registry's pharmacies,
wholesalers and distributors as Organizations, prescribers as Practitioners and their designees
as PractitionerRoles — read and searched, each lookup audited with the client that asked — and
`POST /fhir/Organization/$rems-ship-check`: may this wholesaler ship clozapine to this pharmacy?

Scopes `system/Organization.rs`, `system/Practitioner.rs`, `system/PractitionerRole.rs` see no
patient data. A read of an id the registry does not hold answers the resource a client stored
under that id, if any (these types are stored as received too)."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query, Request

from gateway.app.values import Source
from gateway.fhir.auth import Principal, requires
from gateway.fhir.http import FhirError, FhirResponse, check_format, json_body
from gateway.fhir.resources import (
    clinical_now,
    context_of,
    read_response,
    reads_of,
    searchset,
    service_of,
    validated,
)
from gateway.fhir.search import PAGING, page, search_parameters
from mappings.fhir.parties import TYPES, party_resource, read_ship_check, ship_check_parameters
from rems_core.monitoring import local_date
from rems_core.parties import PartyKind
from rems_core.rulepack import OutOfScope
from rems_core.store.fhir_repo import StoredResource
from rems_core.store.parties_repo import (
    ORGANIZATION,
    PRACTITIONER,
    PRACTITIONER_ROLE,
    PartyQuery,
)

router = APIRouter(tags=["certification lookup"])
ORGANIZATION_SEARCH = ("identifier", "name", "type", "certification-status", "_at")
PRACTITIONER_SEARCH = ("identifier", "name", "certification-status", "_at")
ROLE_SEARCH = ("identifier", "practitioner")
SEARCHES = {
    ORGANIZATION: ORGANIZATION_SEARCH,
    PRACTITIONER: PRACTITIONER_SEARCH,
    PRACTITIONER_ROLE: ROLE_SEARCH,
}
SHIP_CHECK = "urn:rems-gateway:fhir:OperationDefinition/rems-ship-check"
STATUSES = {"certified": True, "not-certified": False}


def _today(request: Request) -> date:
    return local_date(clinical_now(request), context_of(request).tz)


def _day(request: Request) -> date:
    """The day certifications are judged on: `_at` (YYYY-MM-DD), else the clinical now's date."""
    at = request.query_params.get("_at")
    if at is None:
        return _today(request)
    try:
        return date.fromisoformat(at)
    except ValueError:
        raise FhirError(400, "value", "_at is a date, YYYY-MM-DD", ("_at",)) from None


async def _found(
    request: Request, principal: Principal, query: PartyQuery
) -> tuple[list[StoredResource], int]:
    source = Source("fhir", principal.client_id)
    parties, total = await service_of(request).look_up(query, source)
    day = query.day or _day(request)
    shown = []
    for party in parties:
        body = party_resource(party, day)
        shown.append(
            StoredResource(body["resourceType"], body["id"], 1, clinical_now(request), "", body)
        )
    return shown, total


async def _read(
    request: Request, principal: Principal, resource_type: str, resource_id: str
) -> FhirResponse:
    check_format(request)
    query = PartyQuery(resource_type, resource_id=resource_id, day=_day(request), count=1)
    found, _ = await _found(request, principal, query)
    if found:
        return FhirResponse(found[0].body, 200)
    stored = await reads_of(request).resource(resource_type, resource_id)
    return read_response(stored, resource_type, resource_id)


def _identifier(value: str | None) -> tuple[str | None, str] | None:
    """`system|value`, `|value` (no system) or `value` (any system)."""
    if value is None:
        return None
    system, bar, code = value.partition("|")
    if not bar:
        return None, value
    if not code:
        raise FhirError(400, "value", "identifier is system|value or a value", ("identifier",))
    return system or None, code


def _certified(status: str | None) -> bool | None:
    if status is None:
        return None
    if status not in STATUSES:
        raise FhirError(
            400,
            "value",
            "certification-status is certified or not-certified",
            ("certification-status",),
        )
    return STATUSES[status]


async def _search(
    request: Request,
    principal: Principal,
    resource_type: str,
    paging: tuple[int | None, int | None],
    **criteria: object,
) -> FhirResponse:
    check_format(request)
    used = search_parameters(request, (*SEARCHES[resource_type], *PAGING))
    limit, skip = page(*paging)
    day = _day(request)
    query = PartyQuery(resource_type, day=day, count=limit, offset=skip, **criteria)
    found, total = await _found(request, principal, query)
    return searchset(request, used, found, total, skip, limit)


Count = Annotated[int | None, Query(alias="_count")]
Offset = Annotated[int | None, Query(alias="_offset")]
Status = Annotated[str | None, Query(alias="certification-status")]


@router.get("/Organization")
async def search_organizations(
    request: Request,
    principal: Annotated[Principal, requires(ORGANIZATION, "search")],
    identifier: str | None = None,
    name: str | None = None,
    type: str | None = None,
    status: Status = None,
    count: Count = None,
    offset: Offset = None,
) -> FhirResponse:
    """Pharmacies (by NPI), then wholesalers and distributors (by id): `identifier`
    (`system|value`: the NPI of http://hl7.org/fhir/sid/us-npi, a wholesaler's DEA, GLN, HIN …),
    `name` (starts with, any case), `type` (pharmacy, wholesaler, distributor; comma: any of
    them), `certification-status` (certified, not-certified: today, or on `_at`), `_count`,
    `_offset`."""
    kinds = None
    if type is not None:
        wanted = type.split(",")
        if any(kind not in TYPES for kind in wanted):
            raise FhirError(400, "value", f"type is one of {', '.join(TYPES)}", ("type",))
        kinds = tuple(PartyKind(kind) for kind in wanted)
    return await _search(
        request,
        principal,
        ORGANIZATION,
        (count, offset),
        identifier=_identifier(identifier),
        name=name,
        kinds=kinds,
        certified=_certified(status),
    )


@router.get("/Practitioner")
async def search_practitioners(
    request: Request,
    principal: Annotated[Principal, requires(PRACTITIONER, "search")],
    identifier: str | None = None,
    name: str | None = None,
    status: Status = None,
    count: Count = None,
    offset: Offset = None,
) -> FhirResponse:
    """Prescribers by `identifier` (the NPI), `name`, `certification-status`, paged by NPI."""
    return await _search(
        request,
        principal,
        PRACTITIONER,
        (count, offset),
        identifier=_identifier(identifier),
        name=name,
        certified=_certified(status),
    )


@router.get("/PractitionerRole")
async def search_roles(
    request: Request,
    principal: Annotated[Principal, requires(PRACTITIONER_ROLE, "search")],
    identifier: str | None = None,
    practitioner: str | None = None,
    count: Count = None,
    offset: Offset = None,
) -> FhirResponse:
    """Designees by `practitioner` (`Practitioner/<NPI>` or the NPI) or `identifier` (the
    designee's id, system urn:rems-gateway:designee)."""
    return await _search(
        request,
        principal,
        PRACTITIONER_ROLE,
        (count, offset),
        identifier=_identifier(identifier),
        practitioner=practitioner.removeprefix("Practitioner/") if practitioner else None,
    )


def _add_read(resource_type: str, summary: str) -> None:
    """`GET /<Type>/{id}`: the registry's party of that id, else a client's resource."""

    caller = requires(resource_type, "read")

    async def read(
        request: Request, resource_id: str, principal: Principal = caller
    ) -> FhirResponse:
        return await _read(request, principal, resource_type, resource_id)

    path = f"/{resource_type}/{{resource_id}}"
    name = f"read_{resource_type.lower()}"
    router.add_api_route(path, read, methods=["GET"], name=name, description=summary)


_add_read(ORGANIZATION, "`pharmacy-<NPI>`, `wholesaler-<id>`, `distributor-<id>`")
_add_read(PRACTITIONER, "a prescriber by NPI")
_add_read(PRACTITIONER_ROLE, "`designee-<designee id>-<prescriber NPI>`")


@router.post("/Organization/$rems-ship-check")
async def rems_ship_check(
    request: Request, principal: Annotated[Principal, requires(ORGANIZATION, "read")]
) -> FhirResponse:
    """May the wholesaler ship clozapine to the pharmacy on the day (docs/rules.md §10)?"""
    check_format(request)
    data = await json_body(request)
    validated(data, "Parameters")
    asked = read_ship_check(data, _today(request))
    if asked.query is None:
        raise FhirError(422, "invalid", "", issues=asked.problems)
    try:
        checked, found = await service_of(request).check_shipment(
            asked.query, Source("fhir", principal.client_id)
        )
    except OutOfScope as exc:
        raise FhirError(422, "not-supported", str(exc), ("Parameters.parameter",)) from None
    return FhirResponse(ship_check_parameters(checked, asked.query, found), 200)
