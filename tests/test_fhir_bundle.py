"""FHIR Bundles over real HTTP: transaction (all or nothing, urn:uuid references rewritten,
the specimen from the DiagnosticReport), batch (each entry on its own), and every fixture in
fixtures/fhir posting successfully."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from gateway.app.service import RemsService
from gateway.app.values import Source
from rems_core.registry import registry_from
from rems_core.store.fhir_repo import ResourceQuery
from rems_core.store.review_repo import ReviewFilter
from tests.conftest import committed, run, sqlite_only
from tests.http_server import running_app
from tests.test_fhir_observation import anc_issue

FIXTURES = Path(__file__).parent.parent / "fixtures"
FHIR_FILES = sorted((FIXTURES / "fhir").glob("observation-*.json")) + sorted(
    (FIXTURES / "fhir").glob("bundle-*.json")
)
HEADERS = {
    "Content-Type": "application/fhir+json",
    "X-Clinical-Time": "2021-12-20T10:00:00Z",
    "Prefer": "return=OperationOutcome",
}
TRANSACTION = json.loads(
    (FIXTURES / "fhir" / "bundle-transaction-cbc-derived-anc.json").read_text()
)
BATCH = json.loads((FIXTURES / "fhir" / "bundle-batch-two-ancs.json").read_text())


@dataclass(frozen=True)
class Gateway:
    client: httpx.Client  # base URL …/fhir/
    service: RemsService
    base: str  # POST [base]: …/fhir, without a trailing slash


@pytest.fixture
def gw(service: RemsService, engine: Engine) -> Iterator[Gateway]:
    """The example registry loaded, the gateway on a loopback port."""
    import yaml

    document = yaml.safe_load((FIXTURES / "registry" / "example.yaml").read_text())["registry"]
    run(service.load_registry(registry_from(_texts(document)), Source("test")))
    with running_app(service, engine) as base, httpx.Client(base_url=base + "/fhir") as client:
        yield Gateway(client, service, base + "/fhir")


def _texts(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _texts(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_texts(v) for v in value]
    return value if isinstance(value, bool | int | str) or value is None else str(value)


def stored(service: RemsService, resource_type: str) -> list[Any]:
    found, _ = committed(service, lambda s: s.search_resources(ResourceQuery(resource_type)))
    return found


def statuses(bundle: dict[str, Any]) -> list[str]:
    """Each entry's status code (the phrase after it varies with the Python version)."""
    return [e["response"]["status"].split()[0] for e in bundle["entry"]]


def test_a_transaction_stores_the_report_and_yields_a_derived_anc(
    gw: Gateway,
) -> None:
    client, service = gw.client, gw.service
    response = client.post(gw.base, json=TRANSACTION, headers=HEADERS)
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["type"] == "transaction-response"
    assert statuses(bundle) == ["201"] * 3
    report = bundle["entry"][0]["response"]
    assert anc_issue(report["outcome"]) == (1000, "mild")  # 3.3 × 30.3 % = 999.9 → 1000
    assert report["etag"] == 'W/"1"'
    assert report["location"].startswith("/fhir/DiagnosticReport/")
    ancs = committed(service, lambda s: s.anc_results(s.find_patient(_mrn()).rems_id))
    derived = [a for a in ancs if a.derived]
    assert [(a.anc, a.specimen) for a in derived] == [
        (1000, "urn:oid:2.16.840.1.113883.3.999.6|FIX-CBC-20")  # the report's identifier
    ]


def test_urn_uuid_references_are_rewritten_to_the_stored_ids(
    gw: Gateway,
) -> None:
    client, service = gw.client, gw.service
    bundle = client.post("/Bundle", json=TRANSACTION, headers=HEADERS).json()
    observation_ids = [e["response"]["location"].split("/")[3] for e in bundle["entry"][1:]]
    (report,) = stored(service, "DiagnosticReport")
    assert [r["reference"] for r in report.body["result"]] == [
        f"Observation/{i}" for i in observation_ids
    ]
    assert {o.id for o in stored(service, "Observation")} == set(observation_ids)


def test_the_same_transaction_again_changes_nothing(
    gw: Gateway,
) -> None:
    client, service = gw.client, gw.service
    client.post(gw.base, json=TRANSACTION, headers=HEADERS)
    again = copy.deepcopy(TRANSACTION)
    for entry in again["entry"]:
        entry["resource"]["identifier"] = [{"system": "urn:lab", "value": entry["fullUrl"][-2:]}]
    again["entry"][0]["resource"]["identifier"] = TRANSACTION["entry"][0]["resource"]["identifier"]
    second = client.post(gw.base, json=again, headers=HEADERS).json()
    assert statuses(second)[0] == "200"  # the report: the same identifier, the same content
    assert len(stored(service, "DiagnosticReport")) == 1


def test_a_transaction_with_one_bad_entry_stores_nothing(
    gw: Gateway,
) -> None:
    client, service = gw.client, gw.service
    bad = copy.deepcopy(TRANSACTION)
    bad["entry"][2]["resource"]["subject"] = {"display": "nobody in particular"}
    response = client.post(gw.base, json=bad, headers=HEADERS)
    assert response.status_code == 422
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["Bundle.entry[2].resource.subject"]
    assert stored(service, "Observation") == stored(service, "DiagnosticReport") == []
    ancs = committed(service, lambda s: s.anc_results(s.find_patient(_mrn()).rems_id))
    assert [a.anc for a in ancs] == [2100]  # the enrollment's only


def test_a_transaction_for_a_patient_nobody_knows_is_stored_and_held(gw: Gateway) -> None:
    unknown = copy.deepcopy(TRANSACTION)
    for entry in unknown["entry"]:
        entry["resource"]["subject"] = {"reference": "Patient/no-such-patient"}
    response = gw.client.post(gw.base, json=unknown, headers=HEADERS)
    assert response.status_code == 200
    assert {e["response"]["status"].split()[0] for e in response.json()["entry"]} == {"201"}
    assert len(stored(gw.service, "Observation")) == 2
    held, total = committed(gw.service, lambda s: s.review_items(ReviewFilter()))
    assert total == 1 and held[0]["kind"] == "unmatched"
    assert sorted(held[0]["resources"]) == sorted(
        f"Observation/{r.id}" for r in stored(gw.service, "Observation")
    )


@sqlite_only  # refused or answered before the store (conftest)
def test_a_transaction_refuses_an_unsupported_entry(
    gw: Gateway,
) -> None:
    client, service = gw.client, gw.service
    bad = copy.deepcopy(TRANSACTION)
    bad["entry"].append({"request": {"method": "DELETE", "url": "Observation/1"}, "resource": {}})
    response = client.post(gw.base, json=bad, headers=HEADERS)
    assert response.status_code == 400
    assert stored(service, "Observation") == []


def test_a_batch_stores_the_good_entries_and_answers_the_bad_one(
    gw: Gateway,
) -> None:
    client, service = gw.client, gw.service
    mixed = copy.deepcopy(BATCH)
    broken = copy.deepcopy(mixed["entry"][0])
    broken["resource"]["status"] = 7
    broken["request"] = {"method": "POST", "url": "Observation"}
    mixed["entry"].insert(1, broken)
    mixed["entry"].append({"request": {"method": "POST", "url": "Patient"}, "resource": {}})
    response = client.post(gw.base, json=mixed, headers=HEADERS)
    assert response.status_code == 200
    bundle = response.json()
    assert bundle["type"] == "batch-response"
    assert statuses(bundle) == ["201", "422", "201", "400"]
    assert anc_issue(bundle["entry"][0]["response"]["outcome"]) == (800, "moderate")
    assert anc_issue(bundle["entry"][2]["response"]["outcome"]) == (1600, "normal")
    assert bundle["entry"][1]["response"]["outcome"]["issue"][0]["code"] == "invalid"
    assert len(stored(service, "Observation")) == 2
    assert "MRN123" not in response.text
    again = client.post(gw.base, json=BATCH, headers=HEADERS).json()
    assert statuses(again) == ["200", "200"]  # ifNoneExist: the stored ones


@sqlite_only  # refused or answered before the store (conftest)
def test_a_bundle_that_is_not_a_transaction_or_batch_is_refused(
    gw: Gateway,
) -> None:
    client = gw.client
    response = client.post(
        "", json={"resourceType": "Bundle", "type": "collection"}, headers=HEADERS
    )
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Bundle.type"]


BUNDLE_URLS = {
    "transaction": "/",
    "batch": "/",
    "collection": "/Bundle",
    "message": "/$process-message",
}


@pytest.mark.parametrize("path", FHIR_FILES, ids=[p.stem for p in FHIR_FILES])
def test_each_fixture_posts_successfully(gw: Gateway, path: Path) -> None:
    client = gw.client
    body = json.loads(path.read_text())
    kind = body.get("type") if body["resourceType"] == "Bundle" else None
    url = BUNDLE_URLS.get(kind, f"/{body['resourceType']}")
    response = client.post(url, json=body, headers=HEADERS)
    assert response.status_code in (200, 201), response.text
    if kind in ("transaction", "batch"):
        assert all(s.startswith("201") for s in statuses(response.json()))
    elif path.stem.startswith("observation-anc-"):
        assert anc_issue(response.json()) == (1800, "normal")  # every unit spelling: 1800/µL


def _mrn() -> list[Any]:
    from rems_core.model import Identifier

    return [Identifier("urn:oid:2.16.840.1.113883.3.999.1", "MRN123")]


def rems_codes(outcome: dict[str, Any]) -> list[str]:
    return [c["code"] for i in outcome["issue"] for c in i.get("details", {}).get("coding", [])]


def test_an_anc_code_labelled_with_another_analyte_is_stored_and_not_used(gw: Gateway) -> None:
    body = json.loads((FIXTURES / "fhir" / "observation-code-text-mismatch.json").read_text())
    alone = gw.client.post("/Observation", json=body, headers=HEADERS)
    assert alone.status_code == 201 and rems_codes(alone.json()) == ["CODE_TEXT_MISMATCH"]
    with pytest.raises(AssertionError, match="no ANC issue"):
        anc_issue(alone.json())
    relabelled = copy.deepcopy(body) | {"identifier": [{"system": "urn:x", "value": "other"}]}
    entry = {"resource": relabelled, "request": {"method": "POST", "url": "Observation"}}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    answer = gw.client.post("", json=bundle, headers=HEADERS).json()
    assert rems_codes(answer["entry"][0]["response"]["outcome"]) == ["CODE_TEXT_MISMATCH"]
    assert gw.client.get("/Observation", params={"code": "751-8"}).json()["total"] == 2
