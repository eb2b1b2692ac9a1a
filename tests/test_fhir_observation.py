"""FHIR Observations over real HTTP: create, conditional create, correction, read, search, errors."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from gateway.app.bootstrap import bootstrap
from gateway.app.context import UnitContext
from gateway.app.service import RemsService
from gateway.app.values import Source
from rems_core.store import tables
from tests.conftest import PACKS, run, sqlite_only
from tests.http_server import running_app
from tests.test_service import MRN, registry

FHIR = "application/fhir+json"
ANC = {
    "resourceType": "Observation",
    "identifier": [{"system": "urn:oid:2.16.840.1.113883.3.999.5", "value": "LAB-1"}],
    "status": "final",
    "category": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "laboratory",
                }
            ]
        }
    ],
    "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]},
    "subject": {"identifier": {"system": MRN[0].system, "value": MRN[0].value}},
    "effectiveDateTime": "2022-03-02T08:00:00Z",
    "specimen": {"identifier": {"system": "urn:acc", "value": "ACC-9"}},
    "valueQuantity": {
        "value": 0.8,
        "unit": "K/uL",
        "system": "http://unitsofmeasure.org",
        "code": "10*3/uL",
    },
}
AT = {"X-Clinical-Time": "2022-03-02T09:00:00Z"}


@pytest.fixture
def fhir(service: RemsService, engine: Engine) -> Iterator[httpx.Client]:
    run(service.load_registry(registry(), Source("test")))
    with running_app(service, engine) as base, httpx.Client(base_url=base + "/fhir") as client:
        yield client


def post(client: httpx.Client, body: Any, **headers: str) -> httpx.Response:
    return client.post("/Observation", json=body, headers={"Content-Type": FHIR, **AT, **headers})


def anc_issue(outcome: dict[str, Any]) -> tuple[int, str]:
    for issue in outcome["issue"]:
        values = {e["url"].rsplit(":", 1)[1]: e for e in issue.get("extension", [])}
        if "anc" in values:
            return values["anc"]["valueQuantity"]["value"], values["anc-category"]["valueCode"]
    raise AssertionError("no ANC issue")


def test_a_created_anc_is_stored_judged_and_readable(fhir: httpx.Client) -> None:
    created = post(fhir, ANC, Prefer="return=OperationOutcome")
    assert created.status_code == 201
    assert created.headers["content-type"].startswith(FHIR)
    assert anc_issue(created.json()) == (800, "moderate")
    codes = {
        i.get("details", {}).get("coding", [{}])[0].get("code") for i in created.json()["issue"]
    }
    assert "ANC_BELOW_THRESHOLD" in codes
    location = created.headers["location"]
    assert location.startswith("/fhir/Observation/") and location.endswith("/_history/1")
    assert created.headers["etag"] == 'W/"1"'
    read = fhir.get(location.removeprefix("/fhir").split("/_history")[0])
    assert read.status_code == 200
    assert read.json()["meta"]["versionId"] == "1"
    assert read.json()["valueQuantity"]["code"] == "10*3/uL"


def test_the_same_observation_again_is_not_processed_twice(fhir: httpx.Client) -> None:
    first = post(fhir, ANC)
    again = post(fhir, ANC, Prefer="return=OperationOutcome")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.headers["location"] == again.headers["location"]
    assert not any("extension" in i for i in again.json()["issue"])


def test_a_correction_is_a_new_version_with_the_new_value(fhir: httpx.Client) -> None:
    first = post(fhir, ANC).json()
    corrected = copy.deepcopy(ANC) | {"id": first["id"], "status": "corrected"}
    corrected["valueQuantity"] = corrected["valueQuantity"] | {"value": 1.9}
    response = fhir.put(
        f"/Observation/{first['id']}",
        json=corrected,
        headers={
            "Content-Type": FHIR,
            "If-Match": 'W/"1"',
            "Prefer": "return=OperationOutcome",
            **AT,
        },
    )
    assert response.status_code == 200
    assert response.headers["etag"] == 'W/"2"'
    assert anc_issue(response.json()) == (1900, "normal")
    assert (
        fhir.get(f"/Observation/{first['id']}/_history/1").json()["valueQuantity"]["value"] == 0.8
    )
    stale = fhir.put(
        f"/Observation/{first['id']}",
        json=corrected,
        headers={"Content-Type": FHIR, "If-Match": 'W/"1"', **AT},
    )
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"


def test_conditional_create_returns_the_existing_match(fhir: httpx.Client) -> None:
    first = post(fhir, ANC)
    other = copy.deepcopy(ANC)
    other["valueQuantity"]["value"] = 2.5
    again = post(
        fhir, other, **{"If-None-Exist": "identifier=urn:oid:2.16.840.1.113883.3.999.5|LAB-1"}
    )
    assert again.status_code == 200
    assert again.json()["valueQuantity"]["value"] == 0.8
    assert again.headers["location"] == first.headers["location"]


def test_search_by_patient_code_and_date(fhir: httpx.Client) -> None:
    post(fhir, ANC)
    later = copy.deepcopy(ANC) | {"effectiveDateTime": "2022-03-05T08:00:00Z"}
    later["identifier"] = [{"system": "urn:oid:2.16.840.1.113883.3.999.5", "value": "LAB-2"}]
    later["specimen"] = {"identifier": {"system": "urn:acc", "value": "ACC-10"}}
    post(fhir, later)
    found = fhir.get(
        "/Observation",
        params={
            "patient:identifier": f"{MRN[0].system}|{MRN[0].value}",
            "code": "http://loinc.org|751-8",
            "date": "ge2022-03-03",
            "_sort": "-date",
        },
    ).json()
    assert found["resourceType"] == "Bundle" and found["type"] == "searchset"
    assert found["total"] == 1
    assert found["entry"][0]["resource"]["effectiveDateTime"] == "2022-03-05T08:00:00Z"
    every = fhir.get("/Observation", params={"_sort": "-date", "_count": 1}).json()
    assert every["total"] == 2 and len(every["entry"]) == 1
    assert any(link["relation"] == "next" for link in every["link"])


@pytest.mark.parametrize(
    ("body", "content_type", "status", "issue_code"),
    [
        ("{not json", FHIR, 400, "structure"),
        ({"resourceType": "Patient"}, FHIR, 400, "invalid"),
        ({**ANC, "status": 7}, FHIR, 422, "invalid"),
        ({**ANC, "status": "finished"}, FHIR, 422, "code-invalid"),
        (
            {**ANC, "code": {"coding": [{"system": "http://loinc.org", "code": "751-9"}]}},
            FHIR,
            422,
            "code-invalid",
        ),
        (
            {**ANC, "valueQuantity": {**ANC["valueQuantity"], "system": "urn:lab:units"}},
            FHIR,
            422,
            "code-invalid",
        ),
        ({**ANC, "subject": {"display": "someone"}}, FHIR, 422, "required"),
        (ANC, "text/xml", 415, "not-supported"),
    ],
)
@sqlite_only  # refused or answered before the store (conftest)
def test_bad_requests_get_an_operation_outcome(
    fhir: httpx.Client, body: Any, content_type: str, status: int, issue_code: str
) -> None:
    content = body if isinstance(body, str) else httpx.Request("POST", "/", json=body).content
    response = fhir.post(
        "/Observation", content=content, headers={"Content-Type": content_type, **AT}
    )
    assert response.status_code == status
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == issue_code
    assert "MRN123" not in response.text


@sqlite_only  # refused or answered before the store (conftest)
def test_unknown_routes_and_resources_are_operation_outcomes(fhir: httpx.Client) -> None:
    missing = fhir.get("/Observation/no-such-id")
    assert missing.status_code == 404 and missing.json()["issue"][0]["code"] == "not-found"
    unknown = fhir.get("/NoSuchType/1")
    assert unknown.status_code == 404 and unknown.json()["resourceType"] == "OperationOutcome"
    xml = fhir.get("/metadata", params={"_format": "xml"})
    assert xml.status_code == 406 and xml.json()["resourceType"] == "OperationOutcome"


@sqlite_only  # refused or answered before the store (conftest)
def test_metadata_lists_what_works(fhir: httpx.Client) -> None:
    statement = fhir.get("/metadata").json()
    assert statement["fhirVersion"] == "4.0.1"
    observation = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Observation")
    assert {i["code"] for i in observation["interaction"]} >= {"create", "read", "search-type"}


def test_an_anc_in_an_unknown_ucum_unit_is_kept_and_flagged(fhir: httpx.Client) -> None:
    """As over MLLP: an unusable result is stored and reported as a warning, not refused."""
    odd = copy.deepcopy(ANC)
    odd["valueQuantity"] = {"value": 0.8, "system": "http://unitsofmeasure.org", "code": "mg/dL"}
    response = post(fhir, odd, Prefer="return=OperationOutcome")
    assert response.status_code == 201
    codes = [
        i.get("details", {}).get("coding", [{}])[0].get("code") for i in response.json()["issue"]
    ]
    assert "ANC_UNIT_UNKNOWN" in codes


def test_a_comparator_is_read_as_a_censored_value(fhir: httpx.Client) -> None:
    """`<500 /uL` (a result below what the lab measures): stored, not used, and reported as the
    limit it is — below the rationale threshold — never as "not a number"."""
    below = copy.deepcopy(ANC)
    below["valueQuantity"] = {
        "value": 500,
        "comparator": "<",
        "unit": "cells/uL",
        "system": "http://unitsofmeasure.org",
        "code": "/uL",
    }
    response = post(fhir, below, Prefer="return=OperationOutcome")
    assert response.status_code == 201
    (issue,) = [
        i
        for i in response.json()["issue"]
        if i.get("details", {}).get("coding", [{}])[0].get("code") == "ANC_VALUE_INVALID"
    ]
    assert issue["severity"] == "warning"
    text = issue["diagnostics"]
    assert "censored (less than 500 /uL)" in text and "is not a number" not in text
    assert "below the rationale threshold (1,000/µL, general)" in text
    stored = fhir.get(response.headers["Location"].removeprefix("/fhir")).json()
    assert stored["valueQuantity"]["comparator"] == "<"  # kept as sent


def test_parallel_conditional_creates_on_two_gateways_make_one_resource(
    service: RemsService, engine: Engine, db_url: str
) -> None:
    """Two gateway processes' worth (two writers, two servers) on one database, 24 parallel
    conditional creates of one identifier: one resource, and every caller is told its id."""
    run(service.load_registry(registry(), Source("test")))
    condition = {"If-None-Exist": "identifier=urn:oid:2.16.840.1.113883.3.999.5|LAB-1"}
    with (
        bootstrap(db_url, UnitContext(PACKS, rules="clozapine-rems-2021")) as other,
        running_app(service, engine) as first,
        running_app(other.service, other.engine) as second,
    ):

        def create(n: int) -> httpx.Response:
            base = first if n % 2 else second
            with httpx.Client(base_url=base + "/fhir") as client:
                return post(client, ANC, **condition)

        with ThreadPoolExecutor(max_workers=24) as pool:
            answers = list(pool.map(create, range(24)))
    assert sorted(a.status_code for a in answers) == [200] * 23 + [201]
    assert len({a.headers["location"] for a in answers}) == 1
    with engine.connect() as conn:
        rows = conn.execute(
            select(func.count())
            .select_from(tables.FhirResourceRow)
            .where(tables.FhirResourceRow.resource_type == "Observation")
        ).scalar_one()
    assert rows == 1


def test_an_update_of_an_unknown_observation_creates_it_with_the_clients_id(
    fhir: httpx.Client,
) -> None:
    ghost = copy.deepcopy(ANC) | {"id": "lis-obs-0001"}
    headers = {"Content-Type": FHIR, **AT}
    answer = fhir.put("/Observation/lis-obs-0001", json=ghost, headers=headers)
    assert answer.status_code == 201
    assert answer.headers["Location"] == "/fhir/Observation/lis-obs-0001/_history/1"
    assert fhir.get("/Observation/lis-obs-0001").json()["id"] == "lis-obs-0001"
    again = fhir.put("/Observation/lis-obs-0001", json=ghost, headers=headers)
    assert (again.status_code, again.json()["meta"]["versionId"]) == (200, "1")


def test_an_id_of_the_gateways_own_is_not_a_clients(fhir: httpx.Client) -> None:
    """`lab-<n>` names a result that came over HL7 v2: no client may take it."""
    ghost = copy.deepcopy(ANC) | {"id": "lab-7"}
    answer = fhir.put("/Observation/lab-7", json=ghost, headers={"Content-Type": FHIR, **AT})
    assert answer.status_code == 409
    assert answer.json()["issue"][0]["code"] == "conflict"


def test_an_update_cannot_take_another_observations_identifier(fhir: httpx.Client) -> None:
    first = post(fhir, ANC).json()
    second_body = copy.deepcopy(ANC)
    second_body["identifier"] = [{"system": "urn:oid:2.16.840.1.113883.3.999.5", "value": "LAB-2"}]
    second = post(fhir, second_body).json()
    stolen = copy.deepcopy(ANC) | {"id": second["id"]}  # LAB-1 belongs to the first
    answer = fhir.put(
        f"/Observation/{second['id']}", json=stolen, headers={"Content-Type": FHIR, **AT}
    )
    assert answer.status_code == 409
    assert fhir.get(f"/Observation/{first['id']}").json()["meta"]["versionId"] == "1"
