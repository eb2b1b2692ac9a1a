"""The worklist over real HTTP (docs/contracts.md §7): drafts found as `in-progress`
QuestionnaireResponses and completed by PUT as ordinary PSF submissions; Tasks searched by
patient, owner, status and code, closed by the gateway."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from fhir.resources.R4B.task import Task
from sqlalchemy import Engine

from gateway.app.service import RemsService
from gateway.app.values import Source
from tests.builders import PRESCRIBER, at
from tests.conftest import run
from tests.http_server import running_app
from tests.smart_tokens import TestClient, access_token, bearer, smart_settings
from tests.test_worklist import registry

FHIR = "application/fhir+json"
SYSTEM = TestClient.rsa("ehr", ["system/*.cruds"])
USER = TestClient.rsa("dr-lee", ["user/*.cruds"], fhir_user=f"Practitioner/{PRESCRIBER}")


@pytest.fixture
def fhir(service: RemsService, engine: Engine, tmp_path: Path) -> Iterator[httpx.Client]:
    smart = smart_settings(tmp_path, [SYSTEM, USER])
    with running_app(service, engine, **smart) as base:
        system = bearer(access_token(base, SYSTEM, "system/*.cruds"))
        with httpx.Client(base_url=base + "/fhir", headers=system) as client:
            client.headers["X-Prescriber-Token"] = access_token(base, USER, "user/*.cruds")
            yield client


def entries(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", [])]


def completed(draft: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(draft)
    body.pop("meta")
    body["status"] = "completed"
    body["item"].append({"linkId": "signature", "answer": [{"valueBoolean": True}]})
    return body


def test_a_draft_is_found_completed_by_put_and_its_task_closes(
    service: RemsService, fhir: httpx.Client
) -> None:
    patient = run(service.load_registry(registry(), Source("test")))["P1"]
    run(service.run_scheduled(at("2022-02-22")))
    (draft,) = entries(
        fhir.get("/QuestionnaireResponse", params={"patient": patient, "status": "in-progress"})
    )
    QuestionnaireResponse.model_validate(draft)
    assert draft["author"]["reference"] == f"Practitioner/{PRESCRIBER}"
    (task,) = entries(
        fhir.get("/Task", params={"patient": f"Patient/{patient}", "status": "requested"})
    )
    Task.model_validate(task)
    assert task["code"]["coding"][0]["code"] == "psf-due"
    assert task["focus"]["reference"] == f"QuestionnaireResponse/{draft['id']}"
    assert task["owner"]["reference"] == f"Practitioner/{PRESCRIBER}"
    mine = {"owner": f"Practitioner/{PRESCRIBER}", "code": "urn:rems-gateway:task|psf-due"}
    assert [t["id"] for t in entries(fhir.get("/Task", params=mine))] == [task["id"]]

    signed_in = {
        "Authorization": f"Bearer {fhir.headers['X-Prescriber-Token']}",
        "Content-Type": FHIR,
        "X-Clinical-Time": "2022-02-24T10:00:00Z",
    }
    put = fhir.put(
        f"/QuestionnaireResponse/{draft['id']}", json=completed(draft), headers=signed_in
    )
    assert put.status_code == 200, put.text
    assert put.json()["meta"]["versionId"] == "2"
    assert (
        entries(
            fhir.get("/QuestionnaireResponse", params={"patient": patient, "status": "in-progress"})
        )
        == []
    )
    (done,) = entries(fhir.get("/Task", params={"patient": patient, "status": "completed"}))
    assert done["id"] == task["id"] and done["statusReason"]["text"]
    assert fhir.get(f"/Task/{task['id']}/_history/1").json()["status"] == "requested"

    again = fhir.put(
        f"/QuestionnaireResponse/{draft['id']}",
        json=completed(draft) | {"status": "amended"},
        headers=signed_in,
    )
    assert again.status_code == 409  # completed: a new PSF is posted
    unknown = completed(draft) | {"id": "nope"}
    assert (
        fhir.put("/QuestionnaireResponse/nope", json=unknown, headers=signed_in).status_code == 404
    )


def test_task_search_refuses_what_it_cannot_answer(fhir: httpx.Client) -> None:
    for params in ({"code": "psf-late"}, {"status": "open"}):
        response = fhir.get("/Task", params=params)
        assert response.status_code == 400
        assert response.json()["resourceType"] == "OperationOutcome"
    assert fhir.get("/Task/task-none").status_code == 404
    statement = fhir.get("/metadata").json()
    (task,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "Task"]
    assert {p["name"] for p in task["searchParam"]} == {
        "patient",
        "owner",
        "status",
        "code",
        "focus",
    }
