"""fixtures/cds-hooks/*.json: each is a CDS Hooks request its hook allows (docs/contracts.md §6),
every FHIR resource in it is valid R4B, and the folder's README lists it. No server: fast."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

FOLDER = Path(__file__).resolve().parent.parent / "fixtures" / "cds-hooks"
FILES = sorted(FOLDER.glob("*.json"))

# The services of contracts.md §6 and the context keys each hook requires (CDS Hooks 2.0 hook
# definitions); "userId" may be a 1.0-era client's `user` (see user_of).
REQUIRED = {
    "order-sign": ("userId", "patientId", "draftOrders"),
    "order-select": ("userId", "patientId", "draftOrders", "selections"),
    "encounter-discharge": ("userId", "patientId", "encounterId"),
    "patient-view": ("userId", "patientId"),
}
MEDICATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/medicationrequest-category"


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def user_of(request: dict[str, Any]) -> Any:
    """context.userId, or the `user` an older client sends (at the top level or in context)."""
    context = request["context"]
    return context.get("userId") or context.get("user") or request.get("user")


def validate(resource: dict[str, Any]) -> Any:
    """The R4B model of ``resource``, as gateway/fhir/resources.py validates a body."""
    return get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def resources_in(request: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, resource) for every FHIR resource of context and non-null prefetch. A Bundle
    without `type` (the untyped draftOrders of 1.0-era clients) is not an R4B Bundle: its entries
    are the resources."""
    found: list[tuple[str, dict[str, Any]]] = []
    for key, value in request["context"].items():
        if isinstance(value, dict) and "resourceType" in value:
            if value["resourceType"] == "Bundle" and "type" not in value:
                for n, entry in enumerate(value.get("entry", [])):
                    found.append((f"context.{key}.entry[{n}]", entry["resource"]))
            else:
                found.append((f"context.{key}", value))
    for key, value in (request.get("prefetch") or {}).items():
        if value is not None:
            found.append((f"prefetch.{key}", value))
    return found


def test_every_hook_has_a_fixture() -> None:
    assert FILES, FOLDER
    assert {load(path)["hook"] for path in FILES} == set(REQUIRED)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_request_is_valid_for_its_hook(path: Path) -> None:
    request = load(path)
    assert request["hook"] in REQUIRED
    assert str(uuid.UUID(request["hookInstance"])) == request["hookInstance"].lower()
    context = request["context"]
    for key in REQUIRED[request["hook"]]:
        present = user_of(request) if key == "userId" else context.get(key)
        assert present, f"context.{key} missing"
    assert "/" in user_of(request), "userId is [ResourceType]/[id]"
    if "fhirAuthorization" in request:  # cds-r-1: fhirAuthorization implies fhirServer
        auth = request["fhirAuthorization"]
        assert request.get("fhirServer", "").startswith("https://")
        assert auth["token_type"] == "Bearer"
        for field in ("access_token", "expires_in", "scope", "subject"):
            assert auth.get(field), f"fhirAuthorization.{field} missing"
        if "patient/" in auth["scope"]:
            assert auth.get("patient") in (None, context["patientId"])
    prefetch = request.get("prefetch") or {}
    if prefetch.get("patient") is not None:
        assert prefetch["patient"]["id"] == context["patientId"]


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_resource_parses_as_r4b(path: Path) -> None:
    request = load(path)
    found = resources_in(request)
    assert found
    for where, resource in found:
        model = validate(resource)
        assert model.get_resource_type() == resource["resourceType"], where
    for where, resource in found:
        if resource["resourceType"] == "Bundle":
            for entry in resource.get("entry", []):
                assert validate(entry["resource"]), where


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_draft_orders_are_drafts_and_selections_name_them(path: Path) -> None:
    request = load(path)
    context = request["context"]
    if "draftOrders" not in context:
        return
    orders = [entry["resource"] for entry in context["draftOrders"]["entry"]]
    assert orders and all(order["status"] == "draft" for order in orders)
    names = {f"{order['resourceType']}/{order['id']}" for order in orders}
    if request["hook"] == "order-select":
        assert context["selections"] and set(context["selections"]) <= names
        assert len(names) > len(context["selections"]), "a draft order that is not selected"


def test_discharge_medications_are_active_discharge_orders() -> None:
    request = load(FOLDER / "encounter-discharge.json")
    bundle = request["prefetch"]["medications"]
    assert bundle["type"] == "searchset"
    for entry in bundle["entry"]:
        order = entry["resource"]
        assert order["status"] == "active"
        codes = {c["code"] for cat in order["category"] for c in cat["coding"]}
        assert "discharge" in codes
        assert order["encounter"]["reference"] == f"Encounter/{request['context']['encounterId']}"


def test_no_prefetch_fixture_has_only_null_prefetch() -> None:
    request = load(FOLDER / "order-sign-no-prefetch.json")
    assert request["prefetch"] and all(v is None for v in request["prefetch"].values())
    assert request["fhirServer"] and request["fhirAuthorization"]


def test_readme_lists_every_file() -> None:
    readme = (FOLDER / "README.md").read_text(encoding="utf-8")
    for path in FILES:
        assert f"`{path.name}`" in readme, path.name
