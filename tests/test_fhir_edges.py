"""Odd but well-formed requests get a 4xx OperationOutcome, never a 500 (found in review)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from gateway.app.service import RemsService
from gateway.app.values import Source
from tests.conftest import run, sqlite_only
from tests.http_server import running_app
from tests.test_fhir_observation import ANC, AT, FHIR
from tests.test_service import MRN, registry

FIXTURES = Path(__file__).parent.parent / "fixtures" / "fhir"


@pytest.fixture
def fhir(service: RemsService, engine: Engine) -> Iterator[httpx.Client]:
    run(service.load_registry(registry(), Source("test")))
    with running_app(service, engine) as base, httpx.Client(base_url=base + "/fhir") as client:
        yield client


def send(client: httpx.Client, path: str, body: Any, **headers: str) -> httpx.Response:
    return client.post(path, json=body, headers={"Content-Type": FHIR, **AT, **headers})


def outcome_code(response: httpx.Response) -> str:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"][0]["code"]


def transaction(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def test_a_transaction_taking_an_id_of_the_gateways_own_is_409(fhir: httpx.Client) -> None:
    ghost = copy.deepcopy(ANC) | {"id": "lab-1"}
    entry = {"resource": ghost, "request": {"method": "PUT", "url": "Observation/lab-1"}}
    answer = send(fhir, "", transaction(entry))
    assert answer.status_code == 409
    assert outcome_code(answer) == "conflict"
    assert answer.json()["issue"][0]["expression"] == ["Bundle.entry[0].resource.id"]


@sqlite_only  # a request refused before the store
def test_a_bundle_condition_that_is_not_text_is_400(fhir: httpx.Client) -> None:
    entry = {"resource": ANC, "request": {"method": "POST", "url": "Observation", "ifNoneExist": 7}}
    answer = send(fhir, "", transaction(entry))
    assert answer.status_code == 400
    assert outcome_code(answer) == "structure"


@sqlite_only  # a request refused before the store
def test_a_meta_that_is_not_an_object_is_not_a_500(fhir: httpx.Client) -> None:
    body = json.loads((FIXTURES / "medicationrequest-outpatient.json").read_text())
    body["meta"] = "yesterday"
    answer = fhir.post("/MedicationRequest", json=body, headers={"Content-Type": FHIR})
    assert 400 <= answer.status_code < 500
    assert answer.json()["resourceType"] == "OperationOutcome"


@sqlite_only  # a request refused before the store
def test_an_if_match_naming_no_version_is_400(fhir: httpx.Client) -> None:
    created = send(fhir, "/Observation", ANC).json()
    again = copy.deepcopy(ANC) | {"id": created["id"], "status": "corrected"}
    answer = fhir.put(
        f"/Observation/{created['id']}",
        json=again,
        headers={"Content-Type": FHIR, "If-Match": "whatever", **AT},
    )
    assert answer.status_code == 400
    assert fhir.get(f"/Observation/{created['id']}").json()["meta"]["versionId"] == "1"


def test_the_next_link_keeps_an_identifier_parameter_intact(fhir: httpx.Client) -> None:
    second = copy.deepcopy(ANC)
    second["identifier"] = [{"system": "urn:oid:2.16.840.1.113883.3.999.5", "value": "LAB-2"}]
    second["specimen"] = {"identifier": {"system": "urn:acc", "value": "ACC-10"}}
    send(fhir, "/Observation", ANC)
    send(fhir, "/Observation", second)
    wanted = f"{MRN[0].system}|{MRN[0].value}"
    first = fhir.get("/Observation", params={"patient:identifier": wanted, "_count": 1}).json()
    link = next(x["url"] for x in first["link"] if x["relation"] == "next")
    assert link.startswith(f"{fhir.base_url}".rstrip("/") + "/Observation?")  # absolute
    rest = fhir.get(link).json()
    assert rest["total"] == 2 and len(rest["entry"]) == 1
    assert rest["entry"][0]["resource"]["id"] != first["entry"][0]["resource"]["id"]


def test_patient_and_patient_identifier_must_both_match(fhir: httpx.Client) -> None:
    send(fhir, "/Observation", ANC)
    wanted = f"{MRN[0].system}|{MRN[0].value}"
    both = fhir.get(
        "/Observation", params={"patient": "someone-else", "patient:identifier": wanted}
    )
    assert both.json()["total"] == 0


@sqlite_only  # a request refused before the store
def test_a_required_psf_item_without_an_answer_is_422(fhir: httpx.Client) -> None:
    body = json.loads((FIXTURES / "questionnaireresponse-monthly-prescriber.json").read_text())
    for item in body["item"]:
        if item["linkId"] == "type":
            item.pop("answer")
    answer = send(fhir, "/QuestionnaireResponse", body)
    assert answer.status_code in (403, 422)  # no prescriber signed in: 403 may come first
    assert answer.json()["resourceType"] == "OperationOutcome"
