"""Dispense decisions over FHIR (docs/rules.md §6, docs/contracts.md §5) on a real HTTP server:
MedicationRequest, `$rems-etasu`, Patient read/search and `$rems-status`."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.parameters import Parameters
from sqlalchemy import Engine

from gateway.app.service import RemsService
from gateway.app.values import Source
from rems_core.model import DispenseRequest, Identifier, Setting
from rems_core.registry import RegistryDocument
from tests.builders import INPATIENT_ONLY, PHARMACY, PRESCRIBER, UNCERTIFIED
from tests.conftest import run, sqlite_only
from tests.http_server import running_app
from tests.test_fhir_observation import ANC
from tests.test_service import MRN, count

FIXTURES = Path(__file__).parent.parent / "fixtures" / "fhir"
FHIR = "application/fhir+json"
DECISION = "urn:rems-gateway:fhir:rems-decision"
NOT_ENROLLED_MRN = Identifier(MRN[0].system, "MRN456")
AT = "2022-03-02T10:00:00Z"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def registry() -> RegistryDocument:
    outpatient = [{"setting": "outpatient", "certified": True}]
    return RegistryDocument.model_validate(
        {
            "prescribers": [{"npi": PRESCRIBER, "certified": True}],
            "pharmacies": [
                {"npi": PHARMACY, "enrollments": [{"setting": "inpatient", "certified": True}]}
                | {"enrollments": [{"setting": "inpatient", "certified": True}, *outpatient]},
                {
                    "npi": INPATIENT_ONLY,
                    "enrollments": [{"setting": "inpatient", "certified": True}],
                },
                {
                    "npi": UNCERTIFIED,
                    "enrollments": [{"setting": "outpatient", "certified": False}],
                },
            ],
            "patients": [
                {
                    "id": "P1",
                    "identifiers": [{"system": MRN[0].system, "value": MRN[0].value}],
                    "name": {"family": "Doe", "given": "Jane"},
                    "birth_date": "1980-01-01",
                    "sex": "F",
                    "treatment_start": "2020-01-01",
                    "enrollment": {
                        "by": PRESCRIBER,
                        "date": "2022-03-01",
                        "anc": {"value": "2100", "unit": "/uL", "drawn": "2022-02-28"},
                    },
                },
                {
                    "id": "P2",
                    "identifiers": [{"system": MRN[0].system, "value": NOT_ENROLLED_MRN.value}],
                },
            ],
        }
    )


@pytest.fixture
def loaded(service: RemsService) -> dict[str, str]:
    return run(service.load_registry(registry(), Source("test")))


@pytest.fixture
def fhir(service: RemsService, engine: Engine, loaded: dict[str, str]) -> Iterator[httpx.Client]:
    with running_app(service, engine) as base, httpx.Client(base_url=base + "/fhir") as client:
        yield client


def post(
    client: httpx.Client, body: Any, at: str = AT, path: str = "/MedicationRequest", **headers: str
) -> httpx.Response:
    sent = {"Content-Type": FHIR, "X-Clinical-Time": at, **headers}
    return client.post(path, json=body, headers=sent)


def decision_parts(extensions: list[dict[str, Any]]) -> dict[str, Any]:
    """Our decision extension as {url: value} (reasons and warnings as lists of codes)."""
    return extension_parts(extensions, DECISION)


def extension_parts(extensions: list[dict[str, Any]], url: str) -> dict[str, Any]:
    """One of our extensions with sub-extensions as {url: value} (reasons and warnings as lists
    of codes)."""
    found = next(e for e in extensions if e["url"] == url)
    parts: dict[str, Any] = {"reason": [], "warning": []}
    for part in found["extension"]:
        value = next(v for k, v in part.items() if k.startswith("value"))
        if part["url"] in ("reason", "warning"):
            parts[part["url"]].append(value["code"])
        else:
            parts[part["url"]] = value
    return parts


def outcome_decision(outcome: dict[str, Any]) -> dict[str, Any]:
    """What the scenario runner reads from `Prefer: return=OperationOutcome`."""
    summary = next(i for i in outcome["issue"] if "extension" in i)
    return decision_parts(summary["extension"])


def with_identifier(body: dict[str, Any], value: str) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    changed["identifier"] = [{"system": "urn:oid:2.16.840.1.113883.3.999.7", "value": value}]
    return changed


def test_an_authorized_dispense_stores_the_decision_with_its_rda(fhir: httpx.Client) -> None:
    created = post(fhir, fixture("medicationrequest-outpatient.json"))
    assert created.status_code == 201, created.text
    assert created.headers["etag"] == 'W/"1"'
    location = created.headers["location"]
    assert location.startswith("/fhir/MedicationRequest/") and location.endswith("/_history/1")
    decision = decision_parts(created.json()["extension"])
    assert decision["outcome"] == "authorized"
    assert decision["rda"]["value"].startswith("RDA-")
    assert decision["rda-valid-until"].startswith("2022-03-09")
    assert decision["rule-pack"] == "clozapine-rems-2021"
    assert decision["reason"] == []
    read = fhir.get(location.removeprefix("/fhir").split("/_history")[0])
    assert decision_parts(read.json()["extension"])["rda"] == decision["rda"]


def test_the_decision_as_an_operation_outcome(fhir: httpx.Client) -> None:
    response = post(
        fhir, fixture("medicationrequest-outpatient.json"), Prefer="return=OperationOutcome"
    )
    assert response.status_code == 201
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    summary = outcome["issue"][0]
    assert summary["severity"] == "information"
    assert "RDA-" in summary["diagnostics"]
    assert outcome_decision(outcome)["outcome"] == "authorized"
    minimal = post(
        fhir,
        with_identifier(fixture("medicationrequest-outpatient.json"), "RX-MIN"),
        Prefer="return=minimal",
    )
    assert minimal.status_code == 201 and minimal.content == b""


def test_a_low_anc_posted_as_an_observation_needs_a_rationale(fhir: httpx.Client) -> None:
    lab = post(fhir, ANC, at="2022-03-02T09:00:00Z", path="/Observation")
    assert lab.status_code == 201
    response = post(
        fhir, fixture("medicationrequest-outpatient.json"), Prefer="return=OperationOutcome"
    )
    decision = outcome_decision(response.json())
    assert decision["outcome"] == "rationale_required"
    assert decision["reason"] == ["ANC_BELOW_THRESHOLD"]
    assert "rda" not in decision
    errors = [i for i in response.json()["issue"] if i["severity"] == "error"]
    assert errors[0]["details"]["coding"][0] == {
        "system": "urn:rems-gateway:codes",
        "code": "ANC_BELOW_THRESHOLD",
    }


def test_an_uncertified_pharmacy_is_denied(fhir: httpx.Client) -> None:
    body = fixture("medicationrequest-outpatient.json")
    body["dispenseRequest"]["performer"]["identifier"]["value"] = UNCERTIFIED
    decision = decision_parts(post(fhir, body).json()["extension"])
    assert (decision["outcome"], decision["reason"]) == ("denied", ["PHARMACY_NOT_CERTIFIED"])


def test_a_patient_not_enrolled_is_denied(fhir: httpx.Client, loaded: dict[str, str]) -> None:
    body = fixture("medicationrequest-outpatient.json")
    body["subject"] = {"reference": f"Patient/{loaded['P2']}"}
    response = post(fhir, body)
    assert response.status_code == 201
    decision = decision_parts(response.json()["extension"])
    assert (decision["outcome"], decision["reason"]) == ("denied", ["PATIENT_NOT_ENROLLED"])


def test_a_discharge_from_an_inpatient_only_pharmacy_is_capped_at_7_days(
    fhir: httpx.Client,
) -> None:
    """§6.3: 2 weeks (14 days) is more than the 7 days an inpatient-only pharmacy may supply."""
    response = post(
        fhir, fixture("medicationrequest-discharge.json"), Prefer="return=OperationOutcome"
    )
    decision = outcome_decision(response.json())
    assert decision["outcome"] == "denied"
    assert decision["reason"] == ["DISCHARGE_SUPPLY_EXCEEDS_LIMIT"]
    assert decision["max-days-supply"] == 7
    assert "at most 7 days" in response.json()["issue"][0]["diagnostics"]


def test_a_complete_pharmacist_override_authorizes(fhir: httpx.Client) -> None:
    """§6.2: 50 days after the enrollment PSF only the PSF window fails; the override's ANC is
    current, so the dispense is authorized with PHARMACIST_OVERRIDE."""
    body = fixture("medicationrequest-override.json")
    decision = decision_parts(post(fhir, body, at="2022-04-20T10:00:00Z").json()["extension"])
    assert (decision["outcome"], decision["reason"]) == ("authorized", ["PHARMACIST_OVERRIDE"])
    without = copy.deepcopy(body)
    without["identifier"][0]["value"] = "RX-3002"
    without["extension"][0]["extension"] = [
        e for e in without["extension"][0]["extension"] if e["url"] != "rationale"
    ]
    incomplete = decision_parts(post(fhir, without, at="2022-04-20T11:00:00Z").json()["extension"])
    assert set(incomplete["reason"]) == {"PSF_OUT_OF_WINDOW", "OVERRIDE_INCOMPLETE"}


def test_the_same_request_again_returns_the_stored_decision(
    fhir: httpx.Client, engine: Engine
) -> None:
    from rems_core.store.tables import DecisionRow

    body = fixture("medicationrequest-outpatient.json")
    first = post(fhir, body)
    again = post(fhir, body, at="2022-03-02T11:00:00Z", Prefer="return=OperationOutcome")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["location"] == first.headers["location"]
    decided = decision_parts(first.json()["extension"])
    assert "rda" in decided
    assert outcome_decision(again.json()) == decided  # the stored decision, all of it
    assert count(engine, DecisionRow) == 1


def test_the_same_request_id_with_another_body_is_a_conflict(fhir: httpx.Client) -> None:
    body = fixture("medicationrequest-outpatient.json")
    assert post(fhir, body).status_code == 201
    other = copy.deepcopy(body)
    other["dispenseRequest"]["expectedSupplyDuration"]["value"] = 14
    response = post(fhir, other)
    assert response.status_code == 409
    assert response.json()["issue"][0]["code"] == "conflict"


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (
            {
                "expectedSupplyDuration": {
                    "value": 1,
                    "system": "http://unitsofmeasure.org",
                    "code": "mo",
                }
            },
            "dispenseRequest.expectedSupplyDuration",
        ),
        (
            {
                "expectedSupplyDuration": {
                    "value": 2.5,
                    "system": "http://unitsofmeasure.org",
                    "code": "d",
                }
            },
            "dispenseRequest.expectedSupplyDuration",
        ),
        ({"performer": {"display": "a pharmacy"}}, "dispenseRequest.performer"),
    ],
)
@sqlite_only  # refused or answered before the store (conftest)
def test_an_undecidable_request_is_422(
    fhir: httpx.Client, change: dict[str, Any], where: str
) -> None:
    body = fixture("medicationrequest-outpatient.json")
    body["dispenseRequest"] |= change
    response = post(fhir, body)
    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"] == [f"MedicationRequest.{where}"]
    assert "MRN123" not in response.text


@sqlite_only  # refused or answered before the store (conftest)
def test_an_invalid_resource_is_422_and_a_missing_requester_named(fhir: httpx.Client) -> None:
    body = fixture("medicationrequest-outpatient.json")
    assert post(fhir, body | {"status": 7}).status_code == 422
    no_requester = {k: v for k, v in body.items() if k != "requester"}
    response = post(fhir, no_requester)
    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"] == ["MedicationRequest.requester"]


def test_fhir_decides_as_the_service_does(fhir: httpx.Client, service: RemsService) -> None:
    """One input, one decision: the same dispense through the service and through FHIR."""
    post(fhir, ANC, at="2022-03-02T09:00:00Z", path="/Observation")
    request = DispenseRequest(
        pharmacy_npi=PHARMACY,
        prescriber_npi=PRESCRIBER,
        setting=Setting.OUTPATIENT,
        dispense_date=datetime(2022, 3, 2, 10, tzinfo=UTC),
        days_supply=30,
        drug="197536",
    )
    direct = run(service.decide_dispense(MRN, request, Source("test")))
    body = fixture("medicationrequest-outpatient.json")
    del body["identifier"]
    over_fhir = decision_parts(post(fhir, body).json()["extension"])
    assert over_fhir["outcome"] == direct.outcome.value
    assert over_fhir["reason"] == [r.code for r in direct.reasons]
    assert over_fhir["warning"] == [w.code for w in direct.warnings]
    assert over_fhir["rule-pack-version"] == direct.rule_pack_version
    assert over_fhir["override-possible"] == direct.override_possible


# --- $rems-etasu ---------------------------------------------------------------------------------


def etasu(client: httpx.Client, parameters: dict[str, Any], at: str = AT) -> dict[str, Any]:
    response = post(client, parameters, at=at, path="/GuidanceResponse/$rems-etasu")
    assert response.status_code == 200, response.text
    Parameters.model_validate(response.json())  # valid FHIR R4
    return response.json()["parameter"][0]["resource"]


def requirements(guidance: dict[str, Any]) -> dict[str, str]:
    output = guidance["contained"][0]["parameter"]
    return {p["resource"]["id"]: p["resource"]["status"] for p in output if "resource" in p}


def case_number(guidance: dict[str, Any]) -> str | None:
    output = guidance["contained"][0]["parameter"]
    return next((p["valueString"] for p in output if p["name"] == "case_number"), None)


@pytest.mark.parametrize("name", ["case_number", "caseNumber", "authNumber"])
def test_etasu_reports_the_decision_a_case_number_names(fhir: httpx.Client, name: str) -> None:
    created = post(fhir, fixture("medicationrequest-outpatient.json"))
    decision = decision_parts(created.json()["extension"])
    rda = decision["rda"]["value"]
    for number in (rda, decision["decision-id"]):
        guidance = etasu(
            fhir,
            {"resourceType": "Parameters", "parameter": [{"name": name, "valueString": number}]},
        )
        assert guidance["status"] == "success"
        assert case_number(guidance) == rda
        assert set(requirements(guidance).values()) == {"success"}
        assert all(
            p["resource"]["note"][0]["text"]
            for p in guidance["contained"][0]["parameter"]
            if "resource" in p
        )


def test_etasu_with_an_unknown_case_number_is_a_failure(fhir: httpx.Client) -> None:
    guidance = etasu(fhir, fixture("etasu-case-number.json"))
    assert guidance["status"] == "failure"


def test_etasu_checks_a_new_request_without_recording_it(
    fhir: httpx.Client, engine: Engine
) -> None:
    from rems_core.store.tables import DecisionRow

    post(fhir, ANC, at="2022-03-02T09:00:00Z", path="/Observation")
    guidance = etasu(fhir, fixture("etasu-patient-medication-request.json"))
    assert guidance["status"] == "data-required"
    found = requirements(guidance)
    assert found["anc-acceptable"] == "data-required"
    assert found["pharmacy-certified"] == found["patient-enrolled"] == "success"
    assert case_number(guidance) is None
    assert count(engine, DecisionRow) == 0


def supply_note(guidance: dict[str, Any]) -> str:
    output = guidance["contained"][0]["parameter"]
    found = next(
        p["resource"] for p in output if p.get("resource", {}).get("id") == "supply-within-limit"
    )
    return str(found["note"][0]["text"])


def test_etasu_without_a_days_supply_claims_no_0_day_maximum(fhir: httpx.Client) -> None:
    """A check may leave the supply out (the IG's MedicationRequest often has none): it is
    authorized without a maximum days supply, and says no supply was given — never "at most 0
    days"."""
    post(
        fhir,
        ANC | {"valueQuantity": ANC["valueQuantity"] | {"value": 2.1}},
        at="2022-03-02T09:00:00Z",
        path="/Observation",
    )
    guidance = etasu(fhir, fixture("etasu-patient-medication-request.json"))
    assert guidance["status"] == "success"
    decision = decision_parts(guidance["extension"])
    assert decision["outcome"] == "authorized"
    assert "max-days-supply" not in decision
    assert requirements(guidance)["supply-within-limit"] == "success"
    assert "no days supply was given; no limit applies" in supply_note(guidance)
    assert "No days supply was given." in guidance["note"][0]["text"]


def test_etasu_of_a_discharge_without_a_days_supply_names_the_limit(fhir: httpx.Client) -> None:
    """At a discharge from an inpatient-only pharmacy the supply is limited (§6.3): without one
    the requirement cannot be judged — data-required, with the limit to keep to."""
    post(
        fhir,
        ANC | {"valueQuantity": ANC["valueQuantity"] | {"value": 2.1}},
        at="2022-03-02T09:00:00Z",
        path="/Observation",
    )
    parameters = fixture("etasu-patient-medication-request.json")
    ordered = parameters["parameter"][1]["resource"]
    ordered["category"] = fixture("medicationrequest-discharge.json")["category"]
    parameters["parameter"][2]["resource"]["identifier"][0]["value"] = INPATIENT_ONLY
    guidance = etasu(fhir, parameters)
    assert guidance["status"] == "data-required"
    assert requirements(guidance)["supply-within-limit"] == "data-required"
    assert "no days supply was given (at most 7 days here)" in supply_note(guidance)
    assert decision_parts(guidance["extension"])["max-days-supply"] == 7
    assert (
        "No days supply was given: at most 7 days at this discharge." in guidance["note"][0]["text"]
    )
    ordered["dispenseRequest"] = {
        "expectedSupplyDuration": {"value": 5, "system": "http://unitsofmeasure.org", "code": "d"}
    }
    given = etasu(fhir, parameters)
    assert given["status"] == "success"
    assert decision_parts(given["extension"])["max-days-supply"] == 5
    assert requirements(given)["supply-within-limit"] == "success"


def test_etasu_without_a_pharmacy_says_it_is_needed(fhir: httpx.Client) -> None:
    parameters = fixture("etasu-patient-medication-request.json")
    parameters["parameter"] = [p for p in parameters["parameter"] if p["name"] != "pharmacy"]
    guidance = etasu(fhir, parameters)
    assert guidance["status"] == "data-required"
    assert requirements(guidance)["pharmacy-certified"] == "data-required"
    assert requirements(guidance)["anc-acceptable"] == "success"


def test_etasu_for_a_patient_not_enrolled_is_a_failure(fhir: httpx.Client) -> None:
    parameters = fixture("etasu-patient-medication-request.json")
    parameters["parameter"][0]["resource"]["identifier"][0]["value"] = NOT_ENROLLED_MRN.value
    guidance = etasu(fhir, parameters)
    assert guidance["status"] == "failure"
    assert requirements(guidance)["patient-enrolled"] == "failure"


def test_etasu_for_a_patient_id_the_gateway_does_not_know_is_422(fhir: httpx.Client) -> None:
    parameters = fixture("etasu-patient-medication-request.json")
    parameters["parameter"][0] = {
        "name": "patient",
        "valueReference": {"reference": "Patient/RP-nobody"},
    }
    response = post(fhir, parameters, path="/GuidanceResponse/$rems-etasu")
    assert response.status_code == 422
    assert response.json()["issue"][0]["code"] == "not-found"


@sqlite_only  # refused or answered before the store (conftest)
def test_etasu_without_patient_or_case_number_is_422(fhir: httpx.Client) -> None:
    response = post(fhir, {"resourceType": "Parameters"}, path="/GuidanceResponse/$rems-etasu")
    assert response.status_code == 422


# --- Patient -------------------------------------------------------------------------------------


def test_a_registry_patient_reads_as_a_fhir_patient(
    fhir: httpx.Client, loaded: dict[str, str]
) -> None:
    patient = fhir.get(f"/Patient/{loaded['P1']}").json()
    assert patient["id"] == loaded["P1"]
    assert patient["identifier"] == [{"system": MRN[0].system, "value": MRN[0].value}]
    assert patient["name"] == [{"family": "Doe", "given": ["Jane"]}]
    assert (patient["birthDate"], patient["gender"]) == ("1980-01-01", "female")
    missing = fhir.get("/Patient/no-such-patient")
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"


def test_patients_are_searched_by_identifier(fhir: httpx.Client, loaded: dict[str, str]) -> None:
    found = fhir.get("/Patient", params={"identifier": f"{MRN[0].system}|{MRN[0].value}"}).json()
    assert found["total"] == 1 and found["entry"][0]["resource"]["id"] == loaded["P1"]
    none = fhir.get("/Patient", params={"identifier": f"{MRN[0].system}|NOPE"}).json()
    assert none["total"] == 0
    assert fhir.get("/Patient").status_code == 400


def test_rems_status_tells_where_the_patient_stands(
    fhir: httpx.Client, loaded: dict[str, str]
) -> None:
    post(fhir, ANC, at="2022-03-02T09:00:00Z", path="/Observation")
    response = fhir.get(f"/Patient/{loaded['P1']}/$rems-status", headers={"X-Clinical-Time": AT})
    assert response.status_code == 200
    Parameters.model_validate(response.json())
    values = {p["name"]: p for p in response.json()["parameter"]}
    assert values["enrolled"]["valueBoolean"] is True
    assert values["enrollment-date"]["valueDate"] == "2022-03-01"
    assert values["treatment-status"]["valueCode"] == "active"
    anc = {p["name"]: p for p in values["anc"]["part"]}
    assert anc["value"]["valueQuantity"]["value"] == 800
    assert anc["category"]["valueCode"] == "moderate"
    assert anc["drawn"]["valueDateTime"].startswith("2022-03-02T08:00")
    assert values["monitoring-frequency-recommended"]["valueCode"] == "three_times_weekly"
    assert values["next-anc-due"]["valueDate"] == "2022-03-05"  # 3 days after the draw
    assert values["psf-window-end"]["valueDate"] == "2022-04-07"
    overrides = {p["name"]: p["valueInteger"] for p in values["overrides"]["part"]}
    assert overrides == {"used": 0, "limit": 3, "window-days": 365}
    assert "pending-signature" not in values
    assert fhir.get("/Patient/nobody/$rems-status").status_code == 404


@sqlite_only  # refused or answered before the store (conftest)
def test_metadata_declares_the_dispense_resources(fhir: httpx.Client) -> None:
    resources = {r["type"]: r for r in fhir.get("/metadata").json()["rest"][0]["resource"]}
    assert {i["code"] for i in resources["MedicationRequest"]["interaction"]} >= {"create", "read"}
    assert resources["GuidanceResponse"]["operation"][0]["name"] == "rems-etasu"
    assert resources["Patient"]["operation"][0]["name"] == "rems-status"


@pytest.mark.parametrize(
    ("name", "outcome"),
    [
        ("medicationrequest-outpatient.json", "authorized"),
        ("medicationrequest-inpatient.json", "authorized"),
        ("medicationrequest-discharge.json", None),
        ("medicationrequest-override.json", None),
    ],
)
def test_every_medicationrequest_fixture_is_decided(
    fhir: httpx.Client, name: str, outcome: str | None
) -> None:
    created = post(fhir, fixture(name), Prefer="return=OperationOutcome")
    assert created.status_code == 201, created.text
    decided = outcome_decision(created.json())["outcome"]
    assert decided in ("authorized", "rationale_required", "denied")
    if outcome is not None:
        assert decided == outcome
