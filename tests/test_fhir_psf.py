"""The Patient Status Form over real HTTP: Questionnaires, QuestionnaireResponse submission,
the prescriber's signature and $validate (docs/rules.md §4–5, docs/contracts.md §3, §5)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.questionnaire import Questionnaire
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from sqlalchemy import Engine, func, select

from gateway.app.service import RemsService
from gateway.app.values import Source
from mappings.fhir.psf_outcome import PSF_OUTCOME, SIGNATURE
from mappings.fhir.questionnaire import questionnaire_id, read_response
from rems_core.model import (
    Designation,
    Identifier,
    MonitoringFrequency,
    PsfStatus,
    PsfType,
    SubmitterRole,
    TreatmentStatus,
)
from rems_core.registry import RegistryDocument
from rems_core.store import tables
from tests.builders import PRESCRIBER, UNCERTIFIED
from tests.conftest import PACKS, run, sqlite_only
from tests.http_server import running_app
from tests.smart_tokens import TestClient, access_token, bearer, smart_settings
from tests.test_service import MRN, registry

FHIR = "application/fhir+json"
FIXTURES = Path(__file__).parent.parent / "fixtures" / "fhir"
AT = "2022-03-20T10:00:00Z"
SYSTEM = TestClient.rsa("ehr", ["system/*.cruds"])
PRESCRIBERS = {
    npi: TestClient.rsa(f"prescriber-{npi}", ["user/*.cruds"], fhir_user=f"Practitioner/{npi}")
    for npi in (PRESCRIBER, UNCERTIFIED)
}


class FhirSession(httpx.Client):
    """The EHR's system client, and each prescriber signed in: real SMART access tokens."""

    user_tokens: dict[str, str]


def two_patients() -> RegistryDocument:
    """The test registry with a twin of P1, so one form can be judged on two channels."""
    data = registry().model_dump(mode="json", exclude_none=True)
    twin = copy.deepcopy(data["patients"][0])
    twin["id"] = "P2"
    twin["identifiers"] = [{"system": MRN[0].system, "value": "MRN456"}]
    data["patients"].append(twin)
    return RegistryDocument.model_validate(data)


@pytest.fixture
def fhir(service: RemsService, engine: Engine, tmp_path: Path) -> Iterator[FhirSession]:
    run(service.load_registry(two_patients(), Source("test")))
    smart = smart_settings(tmp_path, [SYSTEM, *PRESCRIBERS.values()])
    with running_app(service, engine, **smart) as base:
        system = bearer(access_token(base, SYSTEM, "system/*.cruds"))
        with FhirSession(base_url=base + "/fhir", headers=system) as client:
            client.user_tokens = {
                npi: access_token(base, user, "user/*.cruds") for npi, user in PRESCRIBERS.items()
            }
            yield client


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"questionnaireresponse-{name}.json").read_text())


def post(
    client: FhirSession, body: Any, user: str | None = None, path: str = "", **headers: str
) -> httpx.Response:
    sent = {"Content-Type": FHIR, "X-Clinical-Time": AT, **headers}
    if user is not None:
        sent |= bearer(client.user_tokens[user])
    return client.post(f"/QuestionnaireResponse{path}", json=body, headers=sent)


def outcome_of(resource: dict[str, Any]) -> dict[str, Any]:
    """The psf-outcome extension of a QuestionnaireResponse or of an OperationOutcome's issue."""
    holders = [resource, *resource.get("issue", [])]
    for holder in holders:
        for extension in holder.get("extension", []):
            if extension["url"] == PSF_OUTCOME:
                found: dict[str, Any] = {"reasons": [], "warnings": []}
                for part in extension["extension"]:
                    value = next(v for k, v in part.items() if k.startswith("value"))
                    if part["url"] in ("reason", "warning"):
                        found[part["url"] + "s"].append(value["code"])
                    else:
                        found[part["url"]] = value
                return found
    raise AssertionError("no PSF outcome")


def expressions(outcome: dict[str, Any]) -> list[str]:
    return [e for issue in outcome["issue"] for e in issue.get("expression", [])]


# --- Questionnaires --------------------------------------------------------------------------


def answer_codes(items: list[dict[str, Any]]) -> dict[str, list[str]]:
    codes: dict[str, list[str]] = {}
    for item in items:
        codes |= answer_codes(item.get("item", []))
        if "answerOption" in item:
            codes[item["linkId"]] = [o["valueCoding"]["code"] for o in item["answerOption"]]
    return codes


def test_the_questionnaires_are_r4b_and_offer_the_domains_codes(fhir: FhirSession) -> None:
    monthly = fhir.get("/Questionnaire/clozapine-psf").json()
    enrollment = fhir.get("/Questionnaire/clozapine-enrollment").json()
    for questionnaire in (monthly, enrollment):
        Questionnaire.model_validate(questionnaire)
    codes = answer_codes(monthly["item"])
    assert codes["type"] == [PsfType.MONTHLY, PsfType.STATUS_CHANGE]
    assert answer_codes(enrollment["item"])["type"] == [PsfType.ENROLLMENT]
    assert codes["submitter.role"] == list(SubmitterRole)
    assert codes["designation"] == list(Designation)
    assert codes["treatment-status"] == [s for s in TreatmentStatus if s != "not_enrolled"]
    assert codes["monitoring-frequency"] == list(MonitoringFrequency)
    pack = PACKS.get("clozapine-rems-2021")
    assert codes["rationale.reason"] == list(pack.rationale_reasons.value)
    found = fhir.get("/Questionnaire").json()
    assert found["type"] == "searchset" and found["total"] == 2
    assert fhir.get("/Questionnaire/other").status_code == 404


@sqlite_only  # refused or answered before the store (conftest)
def test_metadata_declares_the_psf_resources(fhir: FhirSession) -> None:
    resources = {r["type"]: r for r in fhir.get("/metadata").json()["rest"][0]["resource"]}
    assert {i["code"] for i in resources["Questionnaire"]["interaction"]} == {
        "read",
        "search-type",
    }
    response_ops = {o["name"] for o in resources["QuestionnaireResponse"]["operation"]}
    assert response_ops == {"submit", "sign", "validate"}
    for kind in ("Observation", "MedicationRequest", "Bundle"):
        assert "validate" in {o["name"] for o in resources[kind]["operation"]}


# --- submission and signature ----------------------------------------------------------------


def test_a_prescribers_signed_monthly_psf_is_accepted(fhir: FhirSession) -> None:
    """§5.1: a certified prescriber, signed in, submits and so signs the form."""
    created = post(fhir, fixture("monthly-prescriber"), PRESCRIBER)
    assert created.status_code == 201
    assert created.headers["location"].endswith("/_history/1")
    stored = created.json()
    outcome = outcome_of(stored)
    assert (outcome["status"], outcome["accepted"], outcome["reasons"]) == ("accepted", True, [])
    assert outcome["psf-id"].startswith("psf-")
    signature = next(e for e in stored["extension"] if e["url"] == SIGNATURE)
    assert signature["valueSignature"]["who"]["identifier"]["value"] == PRESCRIBER
    read = fhir.get(created.headers["location"].removeprefix("/fhir")).json()
    assert outcome_of(read) == outcome


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table.__table__)).scalar_one()


def test_the_same_response_again_is_not_judged_twice(fhir: FhirSession, engine: Engine) -> None:
    first = post(fhir, fixture("monthly-prescriber"), PRESCRIBER)
    psfs = count(engine, tables.PsfRow)
    again = post(fhir, fixture("monthly-prescriber"), PRESCRIBER, Prefer="return=OperationOutcome")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["location"] == first.headers["location"]
    assert outcome_of(again.json())["psf-id"] == outcome_of(first.json())["psf-id"]
    assert count(engine, tables.PsfRow) == psfs


def test_a_designees_psf_waits_for_the_prescriber_who_signs_it(fhir: FhirSession) -> None:
    """§5.2: a rationale from a designee is held until the certified prescriber signs it."""
    created = post(fhir, fixture("monthly-designee-rationale"), Prefer="return=OperationOutcome")
    assert created.status_code == 201
    held = outcome_of(created.json())
    assert (held["status"], held["accepted"]) == ("pending_prescriber_signature", False)
    assert held["reasons"] == ["PRESCRIBER_SIGNATURE_REQUIRED"]
    resource_id = created.headers["location"].split("/")[3]
    signed = post(
        fhir,
        None,
        PRESCRIBER,
        f"/{resource_id}/$sign",
        **{"X-Clinical-Time": "2022-03-21T09:00:00Z"},
    )
    assert signed.status_code == 200
    assert signed.headers["location"].endswith("/_history/2")
    outcome = outcome_of(signed.json())
    assert (outcome["status"], outcome["accepted"]) == ("accepted", True)
    assert outcome["psf-id"] == held["psf-id"]
    assert any(e["url"] == SIGNATURE for e in signed.json()["extension"])
    twice = post(fhir, None, PRESCRIBER, f"/{resource_id}/$sign")
    assert twice.status_code == 409


def test_a_signed_version_is_filed_as_the_first_was(fhir: FhirSession, engine: Engine) -> None:
    """Its questionnaire and authored time, for searches, not the time of the signature."""
    resource_id = pending_response(fhir)
    signed = post(fhir, None, PRESCRIBER, f"/{resource_id}/$sign")
    assert signed.status_code == 200
    table = tables.FhirResourceRow.__table__
    with engine.connect() as conn:
        rows = conn.execute(
            select(table.c.version_id, table.c.code, table.c.effective, table.c.patient_id)
            .where(table.c.id == resource_id)
            .order_by(table.c.version_id)
        ).all()
    assert [r.version_id for r in rows] == [1, 2]
    assert rows[1].code == rows[0].code == "clozapine-psf"
    assert rows[1].effective == rows[0].effective == datetime(2022, 3, 20, 10, tzinfo=UTC)
    assert rows[1].patient_id == rows[0].patient_id is not None


def pending_response(fhir: FhirSession) -> str:
    created = post(fhir, fixture("monthly-designee-rationale"))
    return created.headers["location"].split("/")[3]


@pytest.mark.parametrize("signer", [None, UNCERTIFIED], ids=["system-client", "other-prescriber"])
def test_only_the_forms_prescriber_can_sign_it(fhir: FhirSession, signer: str | None) -> None:
    """docs/contracts.md §3: a system client cannot sign; neither can another prescriber."""
    resource_id = pending_response(fhir)
    refused = post(fhir, None, signer, f"/{resource_id}/$sign")
    assert refused.status_code == 403
    assert refused.json()["issue"][0]["code"] == "forbidden"
    current = fhir.get(f"/QuestionnaireResponse/{resource_id}").json()
    assert current["meta"]["versionId"] == "1"
    assert outcome_of(current)["status"] == "pending_prescriber_signature"


def test_a_system_clients_signed_answer_is_refused(fhir: FhirSession, engine: Engine) -> None:
    refused = post(fhir, fixture("monthly-prescriber"))  # signature true, no signed-in user
    assert refused.status_code == 403
    assert refused.json()["issue"][0]["code"] == "forbidden"
    assert "MRN123" not in refused.text
    assert count(engine, tables.FhirResourceRow) == 0


def test_submit_takes_parameters_and_a_patient_reference(fhir: FhirSession) -> None:
    patient = run_read_patient_id(fhir)
    body = fixture("monthly-designee-rationale") | {"subject": {"reference": f"Patient/{patient}"}}
    parameters = {
        "resourceType": "Parameters",
        "parameter": [{"name": "response", "resource": body}],
    }
    created = post(fhir, parameters, path="/$submit", Prefer="return=OperationOutcome")
    assert created.status_code == 201
    assert outcome_of(created.json())["status"] == "pending_prescriber_signature"
    unknown = body | {"subject": {"reference": "Patient/no-such-patient"}}
    assert post(fhir, unknown).status_code == 422


def run_read_patient_id(fhir: FhirSession) -> str:
    created = post(fhir, fixture("monthly-designee-rationale"))
    return outcome_of(created.json())["patient"]


def with_item(body: dict[str, Any], link_id: str, answer: dict[str, Any] | None) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    changed["item"] = [i for i in changed["item"] if i["linkId"] != link_id]
    if answer is not None:
        changed["item"].append({"linkId": link_id, "answer": [answer]})
    return changed


BAD_DESIGNATION = {"valueCoding": {"system": "urn:rems-gateway:designation", "code": "purple"}}


@pytest.mark.parametrize(
    ("change", "expression"),
    [
        (
            lambda b: b | {"questionnaire": "urn:example:Questionnaire:other"},
            "QuestionnaireResponse.questionnaire",
        ),
        (
            lambda b: with_item(b, "type", None),
            "QuestionnaireResponse.item.where(linkId='type')",
        ),
        (
            lambda b: with_item(b, "designation", BAD_DESIGNATION),
            "QuestionnaireResponse.item[5].answer[0].valueCoding",
        ),
        (
            lambda b: with_item(b, "justification", {"valueBoolean": True}),
            "QuestionnaireResponse.item[6].answer[0]",
        ),
        (lambda b: b | {"subject": {"display": "someone"}}, "QuestionnaireResponse.subject"),
    ],
    ids=["unknown-questionnaire", "missing-required", "bad-code", "wrong-type", "no-subject"],
)
@sqlite_only  # refused or answered before the store (conftest)
def test_an_invalid_response_gets_422_naming_the_element(
    fhir: httpx.Client, change: Any, expression: str
) -> None:
    response = post(fhir, change(fixture("monthly-prescriber")), PRESCRIBER)
    assert response.status_code == 422
    assert expression in expressions(response.json())
    assert "MRN123" not in response.text and "purple" not in response.text


def test_the_same_form_gets_the_same_outcome_in_process(
    fhir: httpx.Client, service: RemsService
) -> None:
    """One form, two channels: FHIR for P1, the application service for its twin P2."""
    body = fixture("monthly-prescriber")
    anc = body["item"][4]["item"][0]["answer"][0]["valueQuantity"]
    anc["value"] = 0.9  # moderate: a rationale is required (§5.3), and none is given
    over_fhir = outcome_of(post(fhir, body, PRESCRIBER).json())
    assert over_fhir["status"] == PsfStatus.REJECTED
    twin = copy.deepcopy(body)
    twin["subject"]["identifier"]["value"] = "MRN456"
    now = datetime.fromisoformat(AT)
    reading = read_response(QuestionnaireResponse.model_validate(twin), now, service.ctx.tz)
    assert reading.form is not None
    form = replace(reading.form, signed=True, signed_by=PRESCRIBER, signed_at=now)
    in_process = run(service.submit_psf([Identifier(MRN[0].system, "MRN456")], form, Source("t")))
    assert over_fhir["status"] == in_process.status
    assert over_fhir["reasons"] == [r.code for r in in_process.reasons]
    assert over_fhir["warnings"] == [w.code for w in in_process.warnings]


# --- $validate -------------------------------------------------------------------------------


def validate(client: httpx.Client, resource_type: str, body: Any) -> httpx.Response:
    return client.post(
        f"/{resource_type}/$validate",
        json=body,
        headers={"Content-Type": FHIR, "X-Clinical-Time": AT},
    )


def test_validate_answers_valid_without_storing(fhir: FhirSession, engine: Engine) -> None:
    good = validate(fhir, "QuestionnaireResponse", fixture("monthly-prescriber"))
    assert good.status_code == 200
    assert [i["diagnostics"] for i in good.json()["issue"]] == ["valid"]
    wrapped = {
        "resourceType": "Parameters",
        "parameter": [{"name": "resource", "resource": fixture("monthly-prescriber")}],
    }
    assert (
        validate(fhir, "QuestionnaireResponse", wrapped).json()["issue"][0]["diagnostics"]
        == "valid"
    )
    observation = json.loads((FIXTURES / "observation-anc-per-uL.json").read_text())
    assert (
        validate(fhir, "Observation", observation).json()["issue"][0]["severity"] == "information"
    )
    assert count(engine, tables.FhirResourceRow) == 0


@sqlite_only  # refused or answered before the store (conftest)
def test_validate_answers_the_issues_of_a_bad_resource(fhir: FhirSession) -> None:
    bad = with_item(fixture("monthly-prescriber"), "designation", BAD_DESIGNATION)
    answered = validate(fhir, "QuestionnaireResponse", bad)
    assert answered.status_code == 200
    assert answered.json()["issue"][0]["severity"] == "error"
    assert "QuestionnaireResponse.item[5].answer[0].valueCoding" in expressions(answered.json())
    observation = json.loads((FIXTURES / "observation-anc-per-uL.json").read_text())
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": observation | {"status": "nonsense"},
                "request": {"method": "POST", "url": "Observation"},
            }
        ],
    }
    issues = validate(fhir, "Bundle", bundle).json()["issue"]
    assert issues[0]["severity"] == "error"
    medication = json.loads((FIXTURES / "medicationrequest-outpatient.json").read_text())
    assert validate(fhir, "MedicationRequest", medication).json()["issue"][0]["diagnostics"] == (
        "valid"
    )
    no_subject = medication | {"subject": {"display": "someone"}}  # valid R4B, not for us
    answered = validate(fhir, "MedicationRequest", no_subject).json()
    assert "MedicationRequest.subject" in expressions(answered)


def test_questionnaire_canonicals() -> None:
    assert (
        questionnaire_id("urn:rems-gateway:fhir:Questionnaire:clozapine-psf|1") == "clozapine-psf"
    )
    assert questionnaire_id("https://gw.example/fhir/Questionnaire/clozapine-enrollment") == (
        "clozapine-enrollment"
    )
    assert questionnaire_id("urn:rems-gateway:fhir:Questionnaire:clozapine-psf|2") == (
        "clozapine-psf"
    )  # version 2 adds the draft's read-only items; responses to 1 are read the same
    assert questionnaire_id("urn:rems-gateway:fhir:Questionnaire:clozapine-psf|3") is None


def test_a_second_entry_of_the_months_psf_is_a_repeat_or_waits_beside_the_first(
    fhir: FhirSession, engine: Engine
) -> None:
    """§5.7 over FHIR: another client's copy of the accepted form changes nothing; a different
    one is held for the prescriber, and both responses are there to compare."""
    first = post(fhir, fixture("monthly-prescriber"), PRESCRIBER, Prefer="return=OperationOutcome")
    accepted = outcome_of(first.json())
    psfs = count(engine, tables.PsfRow)
    copy_of = fixture("monthly-prescriber")
    copy_of["identifier"]["value"] = "PSF-2022-03-20-2"  # another submission of the same form
    repeat = post(fhir, copy_of, PRESCRIBER, Prefer="return=OperationOutcome")
    assert repeat.status_code == 201
    repeated = outcome_of(repeat.json())
    assert (repeated["status"], repeated["psf-id"]) == ("accepted", accepted["psf-id"])
    assert repeated["warnings"] == ["PSF_REPEATED"]
    assert count(engine, tables.PsfRow) == psfs
    weekly = with_item(
        fixture("monthly-prescriber"),
        "monitoring-frequency",
        {"valueCoding": {"system": "urn:rems-gateway:monitoring-frequency", "code": "weekly"}},
    )
    weekly["identifier"]["value"] = "PSF-2022-03-20-3"
    weekly["item"] = [i for i in weekly["item"] if i["linkId"] != "signature"]  # unsigned
    held = post(fhir, weekly, Prefer="return=OperationOutcome")
    assert outcome_of(held.json())["status"] == "pending_prescriber_signature"
    assert outcome_of(held.json())["reasons"] == ["PSF_CONFLICT"]
    assert count(engine, tables.PsfRow) == psfs + 1
    listed = fhir.get("/QuestionnaireResponse", params={"patient": accepted["patient"]})
    statuses = sorted(outcome_of(e["resource"])["status"] for e in listed.json()["entry"])
    assert statuses == ["accepted", "accepted", "pending_prescriber_signature"]
