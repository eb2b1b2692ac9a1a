"""`scenario run --via fhir`: steps become FHIR resources the gateway's own mapping reads back
key for key, they really travel over HTTP with the right SMART client (the audit says who), and
the runner's tokens are its own clients', renewed before they expire."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse

from gateway.app.bootstrap import Gateway
from gateway.app.service import RemsService
from gateway.scenarios.fhir_app import LoopbackGateway
from gateway.scenarios.fhir_resources import Decimals, medication_request, questionnaire_response
from gateway.scenarios.file import load
from gateway.scenarios.runner import format_report, run_file
from gateway.scenarios.smart import SYSTEM_CLIENT, RunnerClients, TokenSource, prescriber_client_id
from mappings.fhir.medication_request import read_medication_request
from mappings.fhir.questionnaire import read_response
from rems_core.audit import AuditEntry
from rems_core.model import Identifier
from rems_core.store.repo import Store
from tests.conftest import PACKS, committed, sqlite_only

# The runner's FHIR channel: its resources, its SMART clients and tokens, what the audit says of
# them. The same files on PostgreSQL are test_scenarios' in process (conftest: sqlite_only).
pytestmark = sqlite_only

SUBJECT = Identifier("urn:oid:2.16.840.1.113883.3.999.1", "SCENARIO-FHIR-P1")
REGISTRY = """
registry:
  prescribers:
    - {npi: "1234567893", name: "Ann Lee", certified: true, designees: [{id: D1, name: "Bo Park"}]}
  pharmacies:
    - {npi: "1588667638", name: "General Hospital Pharmacy", enrollments: [{setting: inpatient, certified: true}, {setting: outpatient, certified: true}]}
  patients:
    - id: P1
      identifiers: [{system: "urn:oid:2.16.840.1.113883.3.999.1", value: "SCENARIO-FHIR-P1"}]
      name: {family: Doe, given: Pat}
      birth_date: 1980-01-01
      sex: F
      designation: ben
      treatment_start: 2021-06-01
      enrollment: {by: "1234567893", date: 2022-03-01, anc: {value: 2100, unit: "/uL", drawn: 2022-02-27T08:00:00Z}}
"""
DISPENSES = {
    "every key": '{patient: P1, pharmacy: "1588667638", prescriber: "1234567893", '
    'setting: inpatient, discharge: true, days_supply: 14, drug: "197537", request_id: "R-1", '
    'override: {prescriber_npi: "1234567893", anc: {value: 2.05, unit: "10*3/uL", '
    'drawn: 2022-03-09T08:00:00Z}, rationale: "Reached by phone."}}',
    "defaults": '{patient: P1, pharmacy: "1588667638", prescriber: "1234567893"}',
    "incomplete override": '{patient: P1, pharmacy: "1588667638", prescriber: "1234567893", '
    'override: {rationale: "No ANC."}}',
}
PSFS = {
    "prescriber, every key": '{patient: P1, type: status_change, by: "1234567893", '
    "role: prescriber, designation: hospice, treatment_status: interrupted, "
    "status_effective: 2022-03-09, monitoring_frequency: every_2_weeks, "
    "anc: [{value: 1800, unit: /uL, drawn: 2022-03-09T08:00:00Z}, "
    "{value: 1.9, unit: 10*3/uL, drawn: 2022-03-08T08:00:00Z, code: 26499-4}], "
    "missed_draws: [2022-03-01, 2022-03-03], justification: Travelling, "
    'rationale: {reason: other, text: "Family visit."}, signed: true}',
    "designee naming the prescriber": "{patient: P1, type: monthly, by: D1, role: designee, "
    'prescriber: "1234567893", treatment_status: active, '
    "rationale: {reason: benefit_outweighs_risk}}",
    "enrollment, free-text reason": '{patient: P1, type: enrollment, by: "1234567893", '
    "designation: general, rationale: {reason: my own words, text: Why}}",
}


def scenario_file(tmp_path: Path, steps: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(f"name: fhir channel\n{REGISTRY}steps:\n{steps}", encoding="utf-8")
    return path


def one_step(tmp_path: Path, kind: str, body: str) -> Any:
    return load(scenario_file(tmp_path, f"  - at: 2022-03-10T09:00:00Z\n    {kind}: {body}\n"))


@pytest.mark.parametrize("body", DISPENSES.values(), ids=DISPENSES.keys())
def test_a_dispense_step_is_read_back_as_the_same_request(tmp_path: Path, body: str) -> None:
    step = one_step(tmp_path, "dispense", body).steps[0]
    numbers = Decimals()
    sent = MedicationRequest.model_validate_json(
        numbers.dumps(medication_request(step.request, SUBJECT, numbers))
    )
    reading = read_medication_request(sent, step.at)
    assert reading.problems == []
    assert reading.subject is not None and reading.subject.identifiers == (SUBJECT,)
    assert reading.request == step.request


@pytest.mark.parametrize("body", PSFS.values(), ids=PSFS.keys())
def test_a_psf_step_is_read_back_as_the_same_form(tmp_path: Path, body: str) -> None:
    step = one_step(tmp_path, "psf", body).steps[0]
    numbers = Decimals()
    sent = QuestionnaireResponse.model_validate_json(
        numbers.dumps(questionnaire_response(step.request, SUBJECT, numbers))
    )
    reading = read_response(sent, datetime(2030, 1, 1, tzinfo=UTC), UTC)
    assert reading.problems == []
    assert reading.form is not None
    # Signing is not in the form: it is the act of the prescriber's own token (the gateway's).
    form = step.request
    unsigned = replace(form, signed=False, signed_by=None, signed_at=None)
    assert reading.form == unsigned
    answered = True if form.signed_by else (False if form.role == "prescriber" else None)
    assert reading.signature is answered


def audit_of(service: RemsService) -> list[AuditEntry]:
    return committed(service, lambda store: list(store.audit_records()))


def test_steps_travel_over_fhir_with_the_right_client(
    tmp_path: Path, db_url: str, service: RemsService
) -> None:
    """Each step's audit record shows it came over FHIR and which SMART client sent it: the
    runner's system client, or the prescriber's own user client for a signed form and a sign."""
    steps = """
  - at: 2022-03-10T09:00:00Z
    lab: {patient: P1, code: "751-8", value: 1800, unit: /uL, drawn: 2022-03-10T08:00:00Z}
    expect: {anc: 1800, category: normal}
  - at: 2022-03-10T10:00:00Z
    psf: {patient: P1, type: monthly, by: D1, role: designee, prescriber: "1234567893",
          designation: ben, treatment_status: active, monitoring_frequency: every_2_weeks}
    expect: {accepted: false, status: pending_prescriber_signature}
  - at: 2022-03-10T11:00:00Z
    sign: {patient: P1, by: "1234567893"}
    expect: {accepted: true, status: accepted}
  - at: 2022-03-10T12:00:00Z
    psf: {patient: P1, type: monthly, by: "1234567893", role: prescriber, designation: ben,
          treatment_status: active, monitoring_frequency: every_2_weeks, signed: true}
    expect: {accepted: true, status: accepted}
  - at: 2022-03-10T13:00:00Z
    dispense: {patient: P1, pharmacy: "1588667638", prescriber: "1234567893", setting: outpatient,
               days_supply: 14, request_id: "R-7"}
    expect: {outcome: authorized, rda: true, http_status: 201}
  - at: 2022-03-10T13:01:00Z
    dispense: {patient: P1, pharmacy: "1588667638", prescriber: "1234567893", setting: outpatient,
               days_supply: 14, request_id: "R-7"}
    expect: {outcome: authorized, rda: true, http_status: 200}
  - at: 2022-03-10T13:02:00Z
    dispense: {patient: P1, pharmacy: "1588667638", prescriber: "1234567893", setting: outpatient,
               days_supply: 30, request_id: "R-7"}
    expect: {http_status: 409, reasons: []}
"""
    report = asyncio.run(run_file(scenario_file(tmp_path, steps), db_url, PACKS, "fhir"))
    assert report.passed, format_report(report)
    own = ("registry", "task")  # the registry load; the worklist's tasks the steps open and close
    acts = [(a.kind, a.channel, a.actor) for a in audit_of(service) if a.kind not in own]
    prescriber = prescriber_client_id("1234567893")
    assert acts == [
        ("lab", "fhir", SYSTEM_CLIENT),
        ("psf", "fhir", SYSTEM_CLIENT),
        ("psf_signature", "fhir", prescriber),
        ("psf", "fhir", prescriber),
        ("dispense", "fhir", SYSTEM_CLIENT),  # the repeat and the conflict decide nothing
    ]


def test_the_same_steps_in_process_say_so_in_the_audit(
    tmp_path: Path, db_url: str, service: RemsService
) -> None:
    steps = """
  - at: 2022-03-10T13:00:00Z
    dispense: {patient: P1, pharmacy: "1588667638", prescriber: "1234567893", days_supply: 14}
    expect: {outcome: authorized}
"""
    report = asyncio.run(run_file(scenario_file(tmp_path, steps), db_url, PACKS, "inprocess"))
    assert report.passed, format_report(report)
    assert [a.channel for a in audit_of(service) if a.kind == "dispense"] == ["scenario"]


COMPLETION = """
  - at: 2022-03-26T10:00:00Z
    psf: {patient: P1, type: monthly, by: "1234567893", designation: ben, treatment_status: active,
          monitoring_frequency: every_2_weeks, signed: true, complete_draft: true}
    expect: {accepted: true, draft: none}
"""


def draft_status(service: RemsService) -> str | None:
    def read(store: Store) -> str | None:
        patient = store.find_patient([SUBJECT])
        row = store.draft_for(patient.rems_id, date(2022, 4, 1)) if patient else None
        return row["status"] if row else None

    return committed(service, read)


@pytest.mark.parametrize(("via", "status"), [("inprocess", "withdrawn"), ("fhir", "submitted")])
def test_complete_draft_puts_the_draft_over_fhir_and_submits_anew_in_process(
    tmp_path: Path, db_url: str, service: RemsService, via: str, status: str
) -> None:
    """Over FHIR the draft itself is completed (its next version, submitted); in process the
    PSF is an ordinary submission, and the draft it makes unneeded is withdrawn."""
    opened = """
  - at: 2022-03-25T12:00:00Z
    advance_to: {to: 2022-03-25T12:00:00Z, patient: P1}
    expect: {draft: {due: 2022-04-01, versions: 1}}
"""
    report = asyncio.run(run_file(scenario_file(tmp_path, opened + COMPLETION), db_url, PACKS, via))
    assert report.passed, format_report(report)
    assert draft_status(service) == status


@pytest.mark.parametrize("via", ["inprocess", "mllp", "fhir"])
def test_complete_draft_without_an_open_draft_is_an_error_of_the_step(
    tmp_path: Path, db_url: str, via: str
) -> None:
    report = asyncio.run(run_file(scenario_file(tmp_path, COMPLETION), db_url, PACKS, via))
    (step,) = report.steps
    assert step.problems == [
        f"cannot run: {step.step.label}: complete_draft: the patient has no open draft"
    ]


def test_tokens_are_the_runners_clients_and_renewed_before_they_expire(
    application: Gateway,
) -> None:
    clients = RunnerClients.make(["1234567893"])
    gateway = LoopbackGateway(application, clients)
    base = gateway.start()

    async def exchange() -> tuple[str, str, str, str]:
        import httpx

        async with httpx.AsyncClient(base_url=base) as http:
            tokens = TokenSource(http, f"{base}/auth/token")
            first = (await tokens.bearer(clients.system))["Authorization"]
            cached = (await tokens.bearer(clients.system))["Authorization"]
            tokens.tokens[SYSTEM_CLIENT].expires = time.monotonic() + 5  # nearly expired
            renewed = (await tokens.bearer(clients.system))["Authorization"]
            user = (await tokens.bearer(clients.prescribers["1234567893"]))["Authorization"]
            return first, cached, renewed, user

    try:
        first, cached, renewed, user = asyncio.run(exchange())
    finally:
        gateway.stop()
        clients.remove()
    assert first == cached != renewed
    claims = jwt.decode(user.removeprefix("Bearer "), options={"verify_signature": False})
    assert claims["fhirUser"] == "Practitioner/1234567893"
    system = jwt.decode(first.removeprefix("Bearer "), options={"verify_signature": False})
    assert "fhirUser" not in system and system["client_id"] == SYSTEM_CLIENT
    assert not clients.folder.exists()
