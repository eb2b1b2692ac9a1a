"""FHIR Patients from the EHR over real HTTP (docs/contracts.md §5): upsert with the client's id,
create, read, search; linking by identifiers to a registry patient, which files the results held
for `Patient/{id}`; ids one space per gateway (409); Patient entries in Bundles."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from gateway.app.service import RemsService
from gateway.app.values import Source
from gateway.mllp.intake import Hl7Intake
from mappings.hl7v2.senders import SenderDirectory
from rems_core.registry import RegistryDocument
from rems_core.store.review_repo import ReviewFilter
from tests.conftest import committed, run
from tests.http_server import running_app
from tests.smart_tokens import TestClient, access_token, bearer, smart_settings
from tests.test_fhir_observation import ANC, AT, FHIR, anc_issue
from tests.test_hl7_intake import errors, fixture
from tests.test_service import MRN, registry

HEADERS = {"Content-Type": FHIR, **AT, "Prefer": "return=OperationOutcome"}
EHR = "urn:oid:2.16.840.1.113883.3.999.7"  # the EHR's own patient ids
PATIENT = {
    "resourceType": "Patient",
    "id": "ehr-1",
    "identifier": [
        {"system": MRN[0].system, "value": MRN[0].value},
        {"system": EHR, "value": "EHR-77"},
        {"value": "no-system"},  # kept in the resource, matches nothing
    ],
    "name": [{"family": "Doe", "given": ["Jane"]}],
}


@pytest.fixture
def fhir(service: RemsService, engine: Engine) -> Iterator[httpx.Client]:
    run(service.load_registry(registry(), Source("test")))
    with running_app(service, engine) as base, httpx.Client(base_url=base + "/fhir") as client:
        yield client


def patient(resource_id: str = "ehr-1", **changes: Any) -> dict[str, Any]:
    return copy.deepcopy(PATIENT) | {"id": resource_id} | changes


def anc(lab_id: str, subject: dict[str, Any], value: float = 0.8) -> dict[str, Any]:
    body = copy.deepcopy(ANC)
    body["identifier"][0]["value"] = lab_id
    body["specimen"]["identifier"]["value"] = f"ACC-{lab_id}"
    body["subject"] = subject
    body["valueQuantity"]["value"] = value
    return body


def put(client: httpx.Client, body: dict[str, Any], **headers: str) -> httpx.Response:
    return client.put(f"/Patient/{body['id']}", json=body, headers=HEADERS | headers)


def codes(outcome: dict[str, Any]) -> set[str]:
    return {c["code"] for i in outcome["issue"] for c in i.get("details", {}).get("coding", [])}


def diagnostics(outcome: dict[str, Any]) -> str:
    return " ".join(i.get("diagnostics", "") for i in outcome["issue"])


def items(service: RemsService) -> list[dict[str, Any]]:
    return committed(service, lambda s: s.review_items(ReviewFilter(status=None)))[0]


def rems_id(service: RemsService) -> str:
    """The registry patient's id (MRN123)."""
    found = committed(service, lambda s: s.find_patient(MRN))
    assert found is not None
    return found.rems_id


def ancs(service: RemsService) -> list[int | None]:
    return [a.anc for a in committed(service, lambda s: s.anc_results(rems_id(service)))]


def test_put_is_an_upsert_with_the_clients_id_and_post_gets_a_new_one(
    fhir: httpx.Client, service: RemsService
) -> None:
    unlinked = patient(identifier=[{"system": EHR, "value": "EHR-1"}])
    created = put(fhir, unlinked, Prefer="return=representation")
    assert created.status_code == 201 and created.json()["id"] == "ehr-1"
    assert created.headers["location"].endswith("/fhir/Patient/ehr-1/_history/1")
    again = put(fhir, unlinked)
    assert again.status_code == 200 and again.headers["etag"] == 'W/"1"'
    changed = put(fhir, unlinked | {"gender": "female"})
    assert changed.status_code == 200 and changed.headers["etag"] == 'W/"2"'
    read = fhir.get("/Patient/ehr-1")
    assert read.status_code == 200 and read.json()["gender"] == "female"
    assert read.json()["meta"]["versionId"] == "2"
    wrong = fhir.put("/Patient/ehr-2", json=unlinked, headers=HEADERS)
    assert wrong.status_code == 400 and wrong.json()["resourceType"] == "OperationOutcome"
    assert fhir.get("/Patient/nobody").status_code == 404

    new = {k: v for k, v in unlinked.items() if k != "id"}
    posted = fhir.post("/Patient", json=new, headers=HEADERS)
    assert posted.status_code == 201
    new_id = posted.headers["location"].split("/")[3]
    assert (
        new_id not in ("ehr-1", rems_id(service))
        and fhir.get(f"/Patient/{new_id}").status_code == 200
    )
    conditional = fhir.post(
        "/Patient", json=new, headers=HEADERS | {"If-None-Exist": f"identifier={EHR}|EHR-1"}
    )
    assert conditional.status_code == 200
    assert conditional.headers["location"].split("/")[3] in ("ehr-1", new_id)
    found = fhir.get("/Patient", params={"identifier": f"{EHR}|EHR-1"}).json()
    assert found["total"] == 2 and {e["resource"]["id"] for e in found["entry"]} == {
        "ehr-1",
        new_id,
    }
    assert items(service) == []  # an unlinked Patient is no review item


def test_an_observation_before_its_patient_is_held_and_the_linking_put_files_it(
    fhir: httpx.Client, service: RemsService, engine: Engine
) -> None:
    early = fhir.post(
        "/Observation", json=anc("LAB-1", {"reference": "Patient/ehr-1"}), headers=HEADERS
    )
    assert early.status_code == 201 and "PATIENT_NOT_MATCHED" in codes(early.json())
    [held] = items(service)
    assert (held["kind"], held["status"]) == ("unmatched", "open")
    assert ancs(service) == [2100]  # the enrollment ANC only

    linked = put(fhir, patient())
    assert linked.status_code == 201
    p1 = rems_id(service)
    assert f"linked to registry patient {p1}; 1 held result(s) filed" in diagnostics(linked.json())
    assert 800 in ancs(service)
    [held] = items(service)
    assert (held["status"], held["patient_id"]) == ("linked", p1)
    registry_patient = fhir.get(f"/Patient/{p1}").json()  # the EHR's id is the patient's now
    assert {"system": EHR, "value": "EHR-77"} in registry_patient["identifier"]
    found = fhir.get("/Patient", params={"identifier": f"{MRN[0].system}|MRN123"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [p1, "ehr-1"]
    observations = fhir.get("/Observation", params={"patient": p1}).json()
    assert "LAB-1" in {e["resource"]["identifier"][0]["value"] for e in observations["entry"]}

    later = fhir.post(
        "/Observation",
        json=anc("LAB-2", {"reference": "Patient/ehr-1"}, 0.6),
        headers=HEADERS,
    )
    assert later.status_code == 201 and "PATIENT_NOT_MATCHED" not in codes(later.json())
    assert anc_issue(later.json()) == (600, "moderate")
    assert len(items(service)) == 1  # nothing new held

    # the EHR id the Patient brought now finds the registry patient from an HL7 ORU
    oru = fixture("oru-v251-loinc-anc.hl7").replace(
        b"MRN123^^^GH&2.16.840.1.113883.3.999.1&ISO^MR",
        b"EHR-77^^^EHR&" + EHR[8:].encode() + b"&ISO^MR",
    )
    assert b"EHR-77" in oru
    intake = Hl7Intake(service, SenderDirectory(accept_unknown=True))
    received = run(intake.receive(oru, datetime(2022, 3, 3, 9, tzinfo=UTC)))
    assert received.code == "AA"
    assert not [e for e in errors(received.ack) if e[3] == "PATIENT_NOT_MATCHED"]
    assert len(items(service)) == 1


def test_a_subject_identifier_without_a_system_is_stored_and_held(
    fhir: httpx.Client, service: RemsService
) -> None:
    bare = fhir.post(
        "/Observation", json=anc("LAB-3", {"identifier": {"value": "MRN123"}}), headers=HEADERS
    )
    assert bare.status_code == 201 and "PATIENT_NOT_MATCHED" in codes(bare.json())
    [held] = items(service)
    assert held["kind"] == "unmatched" and held["candidates"][0]["system"] == ""
    assert ancs(service) == [2100]  # the enrollment ANC only


def test_identifiers_of_two_registry_patients_link_the_patient_to_none(
    service: RemsService, engine: Engine
) -> None:
    document = registry().model_dump(mode="json")
    other = copy.deepcopy(document["patients"][0])
    other |= {"id": "P2", "identifiers": [{"system": EHR, "value": "EHR-77"}]}
    document["patients"].append(other)
    run(service.load_registry(RegistryDocument.model_validate(document), Source("test")))
    with running_app(service, engine) as base, httpx.Client(base_url=base + "/fhir") as client:
        answered = put(client, patient())
        assert answered.status_code == 201 and "PATIENT_AMBIGUOUS" in codes(answered.json())
        stored = committed(service, lambda s: s.current_resource("Patient", "ehr-1"))
        assert stored is not None and stored.patient_id is None
        held = client.post(
            "/Observation", json=anc("LAB-4", {"reference": "Patient/ehr-1"}), headers=HEADERS
        )
        assert "PATIENT_NOT_MATCHED" in codes(held.json())


EHR_A = TestClient.ec("ehr-a", ["system/Patient.cru", "system/Observation.cru"])
EHR_B = TestClient.ec("ehr-b", ["system/Patient.cru"])
SCOPES = "system/Patient.cru system/Observation.cru"


def test_ids_are_one_space_another_clients_id_and_a_registry_id_are_409(
    service: RemsService, engine: Engine, tmp_path: Path
) -> None:
    run(service.load_registry(registry(), Source("test")))
    with running_app(service, engine, **smart_settings(tmp_path, [EHR_A, EHR_B])) as base:
        a = bearer(access_token(base, EHR_A, SCOPES))
        b = bearer(access_token(base, EHR_B, "system/Patient.cru"))
        url = base + "/fhir/Patient/"
        assert httpx.put(url + "ehr-1", json=patient(), headers=HEADERS | a).status_code == 201
        taken = httpx.put(url + "ehr-1", json=patient(), headers=HEADERS | b)
        assert taken.status_code == 409 and taken.json()["resourceType"] == "OperationOutcome"
        p1 = rems_id(service)
        registry_id = httpx.put(url + p1, json=patient(p1), headers=HEADERS | a)
        assert registry_id.status_code == 409
        mine = httpx.put(url + "ehr-1", json=patient(gender="female"), headers=HEADERS | a)
        assert mine.status_code == 200 and mine.headers["etag"] == 'W/"2"'
        scope = httpx.get(
            url + "ehr-1", headers=bearer(access_token(base, EHR_A, "system/Observation.c"))
        )
        assert scope.status_code == 403
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": patient(), "request": {"method": "PUT", "url": "Patient/ehr-1"}}
            ],
        }
        refused = httpx.post(base + "/fhir", json=bundle, headers=HEADERS | b)
        assert refused.status_code == 409


def test_a_transaction_with_a_patient_entry_resolves_its_observations_subject(
    fhir: httpx.Client, service: RemsService
) -> None:
    new = {k: v for k, v in patient().items() if k != "id"}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:0c1f7e2a-0000-4000-8000-000000000001",
                "resource": anc(
                    "LAB-5", {"reference": "urn:uuid:0c1f7e2a-0000-4000-8000-00000000000a"}
                ),
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "fullUrl": "urn:uuid:0c1f7e2a-0000-4000-8000-00000000000a",
                "resource": new,
                "request": {"method": "POST", "url": "Patient"},
            },
        ],
    }
    answered = fhir.post("", json=bundle, headers=HEADERS)
    assert answered.status_code == 200, answered.text
    observation, created = (e["response"] for e in answered.json()["entry"])
    assert (observation["status"], created["status"]) == ("201 Created", "201 Created")
    assert "PATIENT_NOT_MATCHED" not in codes(observation["outcome"])
    patient_id = created["location"].split("/")[3]
    stored = fhir.get("/" + observation["location"].split("/fhir/")[1]).json()
    assert stored["subject"] == {"reference": f"Patient/{patient_id}"}
    assert 800 in ancs(service) and items(service) == []


def test_a_batch_stores_its_patient_entries_first(fhir: httpx.Client, service: RemsService) -> None:
    p1 = rems_id(service)
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": anc("LAB-6", {"reference": "Patient/ehr-9"}),
                "request": {"method": "POST", "url": "Observation"},
            },
            {"resource": patient("ehr-9"), "request": {"method": "PUT", "url": "Patient/ehr-9"}},
            {"resource": patient(p1), "request": {"method": "PUT", "url": f"Patient/{p1}"}},
        ],
    }
    answered = fhir.post("", json=bundle, headers=HEADERS)
    observation, created, taken = (e["response"] for e in answered.json()["entry"])
    assert (observation["status"], created["status"]) == ("201 Created", "201 Created")
    assert taken["status"].startswith("409")
    assert "PATIENT_NOT_MATCHED" not in codes(observation["outcome"])
    assert 800 in ancs(service) and items(service) == []


def test_the_capability_statement_lists_patient_writes(fhir: httpx.Client) -> None:
    statement = fhir.get("/metadata").json()
    [entry] = [r for r in statement["rest"][0]["resource"] if r["type"] == "Patient"]
    interactions = {i["code"] for i in entry["interaction"]}
    assert interactions >= {"create", "update", "read", "search-type"}
    assert entry["updateCreate"] is True and entry["operation"][0]["name"] == "rems-status"
