"""The CapabilityStatement lists exactly what works: every declared interaction and operation
has a route, and every FHIR route is declared."""

from __future__ import annotations

import re
from typing import Any

from tests.test_openapi_fuzz import _document

INTERACTION_ROUTES = {
    "read": ("get", "/fhir/{type}/{id}"),
    "vread": ("get", "/fhir/{type}/{id}/_history/{vid}"),
    "update": ("put", "/fhir/{type}/{id}"),
    "create": ("post", "/fhir/{type}"),
    "search-type": ("get", "/fhir/{type}"),
}
SYSTEM_ROUTES = {
    ("get", "/fhir/metadata"),
    ("get", "/fhir/.well-known/smart-configuration"),
    ("post", "/fhir"),
    ("post", "/fhir/Bundle"),
}


def _shape(path: str) -> str:
    """`/fhir/Observation/{resource_id}/_history/{version_id}` → `/fhir/Observation/{}/_history/{}`."""
    return re.sub(r"\{[^}]+\}", "{}", path)


def _routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    """The FHIR routes; one whose type is a path parameter (resources stored as received) is
    a route of each type it takes."""
    from gateway.fhir.resource_types import STORED_AS_RECEIVED

    routes = {
        (method, _shape(path))
        for path, operations in document["paths"].items()
        if path == "/fhir" or path.startswith("/fhir/")
        for method in operations
    }
    typed = {(m, p) for m, p in routes if p.startswith("/fhir/{}")}
    for method, path in typed:
        routes |= {(method, path.replace("{}", kind, 1)) for kind in STORED_AS_RECEIVED}
    return routes - typed


def _declared(statement: dict[str, Any]) -> set[tuple[str, str]]:
    declared = set()
    for resource in statement["rest"][0]["resource"]:
        kind = resource["type"]
        for interaction in resource["interaction"]:
            method, template = INTERACTION_ROUTES[interaction["code"]]
            path = template.replace("{type}", kind).replace("{id}", "{}").replace("{vid}", "{}")
            declared.add((method, path))
        for operation in resource.get("operation", []):
            name = operation["name"].lstrip("$")
            instance = (
                ("get", f"/fhir/{kind}/{{}}/${name}"),
                ("post", f"/fhir/{kind}/{{}}/${name}"),
            )
            type_level = (("get", f"/fhir/{kind}/${name}"), ("post", f"/fhir/{kind}/${name}"))
            declared.update(instance + type_level)
    for operation in statement["rest"][0].get("operation", []):
        declared.add(("post", f"/fhir/${operation['name']}"))
    return declared


def test_every_route_is_declared_and_every_declaration_has_a_route() -> None:
    from gateway.fhir.capability import capability_statement

    routes = _routes(_document())
    statement = capability_statement("http://localhost/fhir", smart=True)
    declared = _declared(statement)
    undeclared = routes - declared - SYSTEM_ROUTES
    assert not undeclared, f"routes missing from the CapabilityStatement: {sorted(undeclared)}"
    interactions = {
        (method, path)
        for method, path in declared
        if "$" not in path  # an operation may be offered at type or instance level only
    }
    missing = interactions - routes
    assert not missing, f"declared but not routed: {sorted(missing)}"
    for resource in statement["rest"][0]["resource"]:
        for operation in resource.get("operation", []):
            name = operation["name"].lstrip("$")
            assert any(
                path.endswith(f"${name}") and f"/{resource['type']}" in path for _, path in routes
            ), f"{resource['type']} ${name} is declared but not routed"


def test_the_statement_names_its_software_guides_and_system_interactions() -> None:
    from datetime import UTC, datetime

    from gateway.fhir.capability import IMPLEMENTATION_GUIDES, capability_statement

    _document()  # the routes are declared once the app is built
    started = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
    statement = capability_statement(
        "http://localhost/fhir", smart=True, published=started, site=("auto", "America/Chicago")
    )
    assert statement["date"] == "2026-12-02T09:30:00+00:00"  # not hard-coded: the start
    assert statement["software"]["name"] == "rems-gateway" and statement["software"]["version"]
    assert statement["implementationGuide"] == list(IMPLEMENTATION_GUIDES)
    assert [i["code"] for i in statement["rest"][0]["interaction"]] == ["transaction", "batch"]
    (site,) = statement["extension"]
    assert [p["url"] for p in site["extension"]] == ["rules", "timezone"]
