"""Bundles as real senders make them (docs/contracts.md §5), over real HTTP: a converter's batch
of PUT upserts of every type, the FHIR spec's CBC (Observations dated by their report), a
collection (dated by its Specimen), a message to `$process-message`, each sent twice; resources
stored as received; DiagnosticReport on its own; each entry's write scope."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from sqlalchemy import Engine, func, select

from gateway.app.service import RemsService
from gateway.fhir.auth import Principal
from rems_core.store import tables
from tests import test_fhir_bundle
from tests.conftest import committed
from tests.http_server import running_app
from tests.test_fhir_bundle import HEADERS, Gateway, _mrn, statuses
from tests.test_fhir_observation import anc_issue

FIXTURES = Path(__file__).parent.parent / "fixtures" / "fhir"
gw = test_fhir_bundle.gw  # the example registry loaded, the gateway on a loopback port


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


CONVERTER = fixture("bundle-batch-converter-oru-cbc.json")


def resource_rows(service: RemsService) -> list[tuple[str, str, int]]:
    """(type, id, version) of every stored resource version."""
    query = select(
        tables.FhirResourceRow.resource_type,
        tables.FhirResourceRow.id,
        tables.FhirResourceRow.version_id,
    ).order_by(tables.FhirResourceRow.row_id)
    with service.writer.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query)]  # type: ignore[misc]


def ancs(service: RemsService) -> list[tuple[int, bool, str]]:
    found = committed(service, lambda s: s.anc_results(s.find_patient(_mrn()).rems_id))
    return sorted((a.anc, a.derived, a.drawn.isoformat()) for a in found)


def test_a_converter_batch_of_upserts_files_the_anc_and_stores_every_entry(gw: Gateway) -> None:
    response = gw.client.post(gw.base, json=CONVERTER, headers=HEADERS)
    assert response.status_code == 200, response.text
    answered = response.json()
    assert statuses(answered) == ["201"] * len(CONVERTER["entry"])
    by_type = {e["resource"]["resourceType"]: n for n, e in enumerate(CONVERTER["entry"])}
    anc_entry = next(
        n
        for n, e in enumerate(CONVERTER["entry"])
        if e["resource"].get("code", {}).get("coding", [{}])[0].get("code") == "751-8"
    )
    assert anc_issue(answered["entry"][anc_entry]["response"]["outcome"]) == (1800, "normal")
    patient = answered["entry"][by_type["Patient"]]["response"]["outcome"]["issue"][0]
    assert "linked" in patient["diagnostics"]
    # the reported ANC (it outranks the one WBC × neutrophil % would give), drawn at collection
    assert ancs(gw.service) == [
        (1800, False, "2021-12-20T12:42:00+00:00"),
        (2100, False, "2021-11-18T00:00:00+00:00"),
    ]
    for entry in CONVERTER["entry"]:
        url = entry["request"]["url"]
        read = gw.client.get(f"/{url}")
        assert read.status_code == 200, url
        assert read.json()["id"] == entry["resource"]["id"]  # the client's id, kept
    provenance = gw.client.get(f"/{CONVERTER['entry'][-1]['request']['url']}").json()
    assert provenance["target"] == CONVERTER["entry"][-1]["resource"]["target"]


def test_the_same_converter_batch_again_changes_nothing(gw: Gateway) -> None:
    gw.client.post(gw.base, json=CONVERTER, headers=HEADERS)
    rows, results = resource_rows(gw.service), ancs(gw.service)
    again = gw.client.post(gw.base, json=CONVERTER, headers=HEADERS).json()
    assert statuses(again) == ["200"] * len(CONVERTER["entry"])
    assert resource_rows(gw.service) == rows  # no new resources, no new versions
    assert ancs(gw.service) == results
    outcome = again["entry"][0]["response"]["outcome"]
    assert outcome["issue"][0]["diagnostics"] == "already stored: not processed again"


def test_a_changed_entry_of_a_batch_sent_again_is_a_new_version_of_it_only(gw: Gateway) -> None:
    gw.client.post(gw.base, json=CONVERTER, headers=HEADERS)
    rows = resource_rows(gw.service)
    changed = copy.deepcopy(CONVERTER)
    organization = next(
        e for e in changed["entry"] if e["resource"]["resourceType"] == "Organization"
    )
    organization["resource"]["name"] = "GENERAL HOSPITAL CORE LABORATORY"
    again = gw.client.post(gw.base, json=changed, headers=HEADERS).json()
    assert sorted(statuses(again)).count("200") == len(CONVERTER["entry"])
    new = [r for r in resource_rows(gw.service) if r not in rows]
    assert new == [("Organization", organization["resource"]["id"], 2)]


def test_the_specs_cbc_dates_its_observations_by_the_report(gw: Gateway) -> None:
    bundle = fixture("bundle-transaction-cbc-report-dated.json")
    response = gw.client.post(gw.base, json=bundle, headers=HEADERS)
    assert response.status_code == 200, response.text
    assert statuses(response.json()) == ["201"] * len(bundle["entry"])
    assert (1500, True, "2021-12-19T14:30:00+00:00") in ancs(gw.service)
    observation = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    assert "effectiveDateTime" not in observation["resource"]
    (stored,) = [
        o
        for o in committed(gw.service, lambda s: s.search_resources(_query("Observation")))[0]
        if o.body["code"] == observation["resource"]["code"]
    ]
    assert "effectiveDateTime" not in stored.body  # stored as sent; the result is dated
    second = gw.client.post(gw.base, json=bundle, headers=HEADERS).json()
    assert statuses(second) == ["200"] * len(bundle["entry"])


def _query(resource_type: str) -> Any:
    from rems_core.store.fhir_repo import ResourceQuery

    return ResourceQuery(resource_type)


def test_a_collection_is_stored_as_a_bundle_and_dated_by_its_specimen(gw: Gateway) -> None:
    bundle = fixture("bundle-collection-specimen-dated.json")
    response = gw.client.post("/Bundle", json=bundle, headers=HEADERS)
    assert response.status_code == 201, response.text
    location = response.headers["Location"]
    assert location.startswith("/fhir/Bundle/")
    assert anc_issue(response.json()) == (900, "moderate")
    read = gw.client.get(location.removeprefix("/fhir").split("/_history")[0])
    assert read.json()["type"] == "collection"
    assert len(read.json()["entry"]) == len(bundle["entry"])
    assert (900, False, "2021-12-19T22:05:00+00:00") in ancs(gw.service)
    rows = resource_rows(gw.service)
    again = gw.client.post("/Bundle", json=bundle, headers=HEADERS)
    assert (again.status_code, again.headers["Location"]) == (200, location)
    assert resource_rows(gw.service) == rows


def test_a_message_is_processed_and_answered_with_a_response_message(gw: Gateway) -> None:
    message = fixture("bundle-message-oru-anc.json")
    response = gw.client.post("/$process-message", json=message, headers=HEADERS)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["resourceType"], answer["type"]) == ("Bundle", "message")
    header, outcome = (e["resource"] for e in answer["entry"])
    assert header["response"]["identifier"] == message["entry"][0]["resource"]["id"]
    assert header["response"]["code"] == "ok"
    assert header["response"]["details"]["reference"] == answer["entry"][1]["fullUrl"]
    assert header["eventCoding"] == message["entry"][0]["resource"]["eventCoding"]
    assert anc_issue(outcome) == (1200, "mild")
    rows = resource_rows(gw.service)
    again = gw.client.post("/$process-message", json=message, headers=HEADERS).json()
    assert again["entry"][0]["resource"]["response"]["code"] == "ok"
    assert resource_rows(gw.service) == rows


def test_a_message_with_a_refused_entry_is_a_fatal_error_and_keeps_the_rest(gw: Gateway) -> None:
    message = fixture("bundle-message-oru-anc.json")
    message["entry"].append(
        {"fullUrl": "urn:uuid:x", "resource": {"resourceType": "MedicationRequest"}}
    )
    answer = gw.client.post("/$process-message", json=message, headers=HEADERS).json()
    header, outcome = (e["resource"] for e in answer["entry"])
    assert header["response"]["code"] == "fatal-error"
    assert anc_issue(outcome) == (1200, "mild")  # the ANC was taken all the same
    refused = [i for i in outcome["issue"] if i["severity"] == "error"]
    assert refused[0]["diagnostics"].startswith(f"entry {len(message['entry']) - 1}:")


def test_a_message_without_its_header_first_is_400(gw: Gateway) -> None:
    message = fixture("bundle-message-oru-anc.json")
    message["entry"].reverse()
    response = gw.client.post("/$process-message", json=message, headers=HEADERS)
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[0]"]


def test_a_diagnostic_report_is_created_read_searched_and_updated(gw: Gateway) -> None:
    (report,) = [
        e["resource"]
        for e in fixture("bundle-transaction-cbc-report-dated.json")["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
    ]
    report = {k: v for k, v in report.items() if k != "result"}
    created = gw.client.post("/DiagnosticReport", json=report, headers=HEADERS)
    assert created.status_code == 201, created.text
    location = created.headers["Location"].removeprefix("/fhir").split("/_history")[0]
    read = gw.client.get(location).json()
    assert read["code"] == report["code"]
    found = gw.client.get(
        "/DiagnosticReport",
        params={
            "patient:identifier": "urn:oid:2.16.840.1.113883.3.999.1|MRN123",
            "code": "58410-2",
        },
    ).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [read["id"]]
    none = gw.client.get("/DiagnosticReport", params={"code": "24323-8"}).json()
    assert none["total"] == 0
    amended = read | {"status": "amended"}
    updated = gw.client.put(location, json=amended, headers=HEADERS)
    assert (updated.status_code, updated.headers["ETag"]) == (200, 'W/"2"')
    assert (
        gw.client.put(
            "/DiagnosticReport/lis-rpt-1", json=report | {"id": "lis-rpt-1"}, headers=HEADERS
        ).status_code
        == 409
    )  # its identifier is the first's


def test_a_resource_without_rems_effect_is_stored_as_received(gw: Gateway) -> None:
    organization = {"resourceType": "Organization", "name": "Northside Reference Lab"}
    created = gw.client.post("/Organization", json=organization, headers=HEADERS)
    assert created.status_code == 201
    location = created.headers["Location"]
    assert gw.client.get(location.removeprefix("/fhir")).json()["name"] == organization["name"]
    practitioner = {"resourceType": "Practitioner", "id": "npi-1234567893", "active": True}
    put = gw.client.put("/Practitioner/npi-1234567893", json=practitioner, headers=HEADERS)
    assert put.status_code == 201  # update-as-create
    assert gw.client.get("/Practitioner/npi-1234567893/_history/1").status_code == 200
    invalid = gw.client.post("/Encounter", json={"resourceType": "Encounter"}, headers=HEADERS)
    assert invalid.status_code == 422  # Encounter.status and class are required
    unknown = gw.client.post("/Widget", json={"resourceType": "Widget"}, headers=HEADERS)
    assert unknown.status_code == 404
    assert unknown.json()["resourceType"] == "OperationOutcome"


# --- each entry's scope, and ids one space per gateway -------------------------------------------


class FixedAuth:
    """A caller of fixed client id and scopes (the token mechanics are test_fhir_auth's)."""

    def __init__(self) -> None:
        self.principal_now = Principal("lab-a", frozenset({"system/*.cu"}))

    async def principal(self, request: Request) -> Principal:
        return self.principal_now


@pytest.fixture
def scoped(
    gw: Gateway, service: RemsService, engine: Engine
) -> Iterator[tuple[httpx.Client, FixedAuth]]:
    auth = FixedAuth()

    def install(app: FastAPI) -> None:
        app.state.fhir_auth = auth

    with running_app(service, engine, install) as base, httpx.Client(base_url=base + "/fhir") as c:
        yield c, auth


def test_each_entry_needs_its_types_write_scope(scoped: tuple[httpx.Client, FixedAuth]) -> None:
    client, auth = scoped
    auth.principal_now = Principal(
        "lab-a", frozenset({"system/Observation.cu", "system/Patient.cu", "system/Specimen.cu"})
    )
    answer = client.post("", json=CONVERTER, headers=HEADERS).json()
    kinds = [e["resource"]["resourceType"] for e in CONVERTER["entry"]]
    for kind, status in zip(kinds, statuses(answer), strict=True):
        allowed = kind in ("Observation", "Patient", "Specimen")
        assert status == ("201" if allowed else "403"), kind
    assert anc_issue(answer["entry"][kinds.index("Observation") + 2]["response"]["outcome"])


def test_an_id_another_client_created_is_409(scoped: tuple[httpx.Client, FixedAuth]) -> None:
    client, auth = scoped
    client.post("", json=CONVERTER, headers=HEADERS)
    auth.principal_now = Principal("lab-b", frozenset({"system/*.cu"}))
    answer = client.post("", json=CONVERTER, headers=HEADERS).json()
    assert set(statuses(answer)) == {"409"}
    issue = answer["entry"][1]["response"]["outcome"]["issue"][0]
    assert issue["expression"] == ["Bundle.entry[1].resource.id"]


def test_rows_per_type_after_a_converter_batch(gw: Gateway) -> None:
    gw.client.post(gw.base, json=CONVERTER, headers=HEADERS)
    rows = tables.FhirResourceRow
    query = (
        select(rows.resource_type, func.count())
        .where(rows.owner.is_not(None))  # the client's, not the worklist the labs updated
        .group_by(rows.resource_type)
    )
    with gw.service.writer.engine.connect() as conn:
        counts = dict(conn.execute(query).all())
    assert counts == {
        "MessageHeader": 1, "Organization": 1, "Patient": 1, "Practitioner": 1,
        "Encounter": 1, "ServiceRequest": 1, "Specimen": 1, "DiagnosticReport": 1,
        "Observation": 4, "Provenance": 1,
    }  # fmt: skip
