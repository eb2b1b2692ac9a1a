"""`GET /fhir/metadata`: the CapabilityStatement lists exactly what the routes implement.

Its `date` is when this gateway started (the statement describes this running instance: its
routes, its security, its rule pack and time zone, any of which a restart may change);
`software.version` is the installed package's version."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Request

from gateway.fhir.http import FHIR_VERSION, FhirResponse, check_format, fhir_base

router = APIRouter(tags=["metadata"])

# Resource type → (interactions, search parameters, operations). Each route module adds its own
# entry here when it registers its routes (see gateway/fhir/router.py).
RESOURCES: dict[str, dict[str, Any]] = {}

#: Whole-system interactions and operations (rest.interaction, rest.operation).
SYSTEM_INTERACTIONS: list[str] = []
SYSTEM_OPERATIONS: list[tuple[str, str]] = []

SEARCH_TYPES = {
    "patient": "reference",
    "subject": "reference",
    "code": "token",
    "date": "date",
    "identifier": "token",
    "url": "uri",
    "status": "token",
    "type": "token",  # the certification lookup's (gateway/fhir/lookup.py)
    "certification-status": "token",
    "practitioner": "reference",
    "owner": "reference",  # Task's (gateway/fhir/tasks.py)
    "focus": "reference",
    "_at": "date",
}


def declare(
    resource_type: str,
    interactions: list[str],
    search: tuple[str, ...] = (),
    operations: tuple[tuple[str, str], ...] = (),
    conditional_create: bool = False,
    update_create: bool = False,
) -> None:
    """A type's interactions; declared again (a route module and the router each say what they
    add), the declarations are joined."""
    before = RESOURCES.get(resource_type)
    if before is not None:
        interactions = list(dict.fromkeys([*before["interactions"], *interactions]))
        search = tuple(dict.fromkeys([*before["search"], *search]))
        operations = tuple(dict.fromkeys([*before["operations"], *operations]))
        conditional_create = conditional_create or before["conditional_create"]
        update_create = update_create or before["update_create"]
    RESOURCES[resource_type] = {
        "interactions": interactions,
        "search": list(search),
        "operations": list(operations),
        "conditional_create": conditional_create,
        "update_create": update_create,
    }


def declare_system(
    interactions: tuple[str, ...] = (), operations: tuple[tuple[str, str], ...] = ()
) -> None:
    """Interactions and operations on the whole system (`POST [base]`, `[base]/$op`)."""
    SYSTEM_INTERACTIONS.extend(i for i in interactions if i not in SYSTEM_INTERACTIONS)
    SYSTEM_OPERATIONS.extend(o for o in operations if o not in SYSTEM_OPERATIONS)


SOFTWARE = "rems-gateway"
STARTED = datetime.now(UTC)  # the gateway process's start: the statement's date
#: The implementation guides the gateway follows (CapabilityStatement.implementationGuide).
IMPLEMENTATION_GUIDES = (
    # $rems-etasu, GuidanceResponse per requirement
    "http://hl7.org/fhir/us/medication-rems/ImplementationGuide/hl7.fhir.us.medication-rems",
    # topic-based Subscriptions on R4 (docs/contracts.md §7)
    "http://hl7.org/fhir/uv/subscriptions-backport/ImplementationGuide/hl7.fhir.uv.subscriptions-backport",
    # SMART Backend Services (system scopes, the token endpoint, discovery)
    "http://hl7.org/fhir/smart-app-launch/ImplementationGuide/hl7.fhir.uv.smart-app-launch",
)
#: The site's configuration a client may need to read its answers by: the rule pack setting
#: (`--rules`, a pack id or `auto`) and the site's time zone (`--timezone`).
SITE_EXTENSION = "urn:rems-gateway:fhir:site"


def software_version() -> str:
    try:
        return version(SOFTWARE)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def capability_statement(
    base_url: str,
    smart: bool,
    published: datetime | None = None,
    site: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """``published``: the statement's date (default now); ``site``: (rules, time zone)."""
    resources = []
    for resource_type, entry in sorted(RESOURCES.items()):
        resource: dict[str, Any] = {
            "type": resource_type,
            "interaction": [{"code": code} for code in entry["interactions"]],
            "versioning": "versioned",
            "readHistory": "vread" in entry["interactions"],
            "updateCreate": entry["update_create"],
            "conditionalCreate": entry["conditional_create"],
        }
        if entry["search"]:
            resource["searchParam"] = [
                {"name": name, "type": SEARCH_TYPES.get(name, "string")} for name in entry["search"]
            ]
        if entry["operations"]:
            resource["operation"] = [
                {"name": name, "definition": definition} for name, definition in entry["operations"]
            ]
        resources.append(resource)
    rest: dict[str, Any] = {"mode": "server", "resource": resources}
    if SYSTEM_INTERACTIONS:
        rest["interaction"] = [{"code": code} for code in SYSTEM_INTERACTIONS]
    if SYSTEM_OPERATIONS:
        rest["operation"] = [{"name": n, "definition": d} for n, d in SYSTEM_OPERATIONS]
    if smart:
        rest["security"] = {
            "service": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                            "code": "SMART-on-FHIR",
                        }
                    ]
                }
            ],
            "description": "SMART Backend Services: client_credentials with a signed JWT assertion",
        }
    statement: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": (published or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds"),
        "kind": "instance",
        "software": {"name": SOFTWARE, "version": software_version()},
        "implementation": {"description": "Clozapine REMS gateway", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "implementationGuide": list(IMPLEMENTATION_GUIDES),
        "rest": [rest],
    }
    if site is not None:
        rules, timezone = site
        statement["extension"] = [
            {
                "url": SITE_EXTENSION,
                "extension": [
                    {"url": "rules", "valueString": rules},
                    {"url": "timezone", "valueCode": timezone},
                ],
            }
        ]
    return statement


@router.get("/metadata")
async def metadata(request: Request) -> FhirResponse:
    check_format(request)
    state = request.app.state
    ctx = state.gateway.ctx
    site = (ctx.rules, str(ctx.tz))
    statement = capability_statement(
        fhir_base(request), state.settings.auth == "smart", STARTED, site
    )
    return FhirResponse(statement, 200)
