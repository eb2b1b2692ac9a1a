"""CDS Hooks over real HTTP (docs/contracts.md §6): the fixtures of fixtures/cds-hooks/ as EHRs
send them, against fixtures/registry/example.yaml on 2021-12-20 — cards by outcome, labs taken
once, no cards without a clozapine order, 412 without the Patient, feedback into the PSF draft."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import Engine, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.app.service import RemsService
from gateway.app.values import Source
from rems_core.registry import RegistryDocument
from rems_core.store import tables as t
from tests.conftest import run
from tests.http_server import running_app, serving

FIXTURES = Path(__file__).parent.parent / "fixtures"
HOOKS = FIXTURES / "cds-hooks"
NOW = "2021-12-20T15:15:00Z"
LOW_ANC_NOW = "2021-12-20T15:30:00Z"


def hook_request(name: str) -> dict[str, Any]:
    return json.loads((HOOKS / name).read_text())


def example_registry() -> RegistryDocument:
    data = yaml.safe_load((FIXTURES / "registry" / "example.yaml").read_text())
    return RegistryDocument.model_validate(data["registry"])


@pytest.fixture
def cds(service: RemsService, engine: Engine) -> Iterator[httpx.Client]:
    run(service.load_registry(example_registry(), Source("test")))
    with running_app(service, engine) as base, httpx.Client(base_url=base) as client:
        client.headers["X-Clinical-Time"] = NOW
        yield client


def call(client: httpx.Client, service: str, body: dict[str, Any], **headers: str) -> Any:
    return client.post(f"/cds-services/{service}", json=body, headers=headers)


def kept_cards(engine: Engine, count: int) -> list[Any]:
    """The cards kept (without the answer waiting for it): wait a moment for ``count``."""
    deadline = time.monotonic() + 5
    while True:
        with engine.connect() as conn:
            kept = conn.execute(select(t.CdsCard.__table__)).all()
        if len(kept) >= count or time.monotonic() > deadline:
            return kept
        time.sleep(0.02)


def observations(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(t.ObservationRow.__table__)).all())


def cards_of(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return response.json()["cards"]


def test_discovery_lists_the_four_services_with_their_prefetch(cds: httpx.Client) -> None:
    services = {s["id"]: s for s in cds.get("/cds-services").json()["services"]}
    assert {s: services[s]["hook"] for s in services} == {
        "clozapine-rems-order-select": "order-select",
        "clozapine-rems-order-sign": "order-sign",
        "clozapine-rems-encounter-discharge": "encounter-discharge",
        "clozapine-rems-patient-view": "patient-view",
    }
    assert services["clozapine-rems-order-sign"]["prefetch"]["patient"] == (
        "Patient/{{context.patientId}}"
    )
    assert (
        "encounter={{context.encounterId}}"
        in (services["clozapine-rems-encounter-discharge"]["prefetch"]["medications"])
    )


def test_order_sign_with_a_normal_anc_would_be_authorized(
    cds: httpx.Client, application: Any
) -> None:
    (card,) = cards_of(call(cds, "clozapine-rems-order-sign", hook_request("order-sign.json")))
    assert card["indicator"] == "info"
    assert card["summary"] == "Clozapine would be authorized: ANC 3,100/µL (normal) on 2021-12-16"
    assert "rule pack clozapine-rems-2021" in card["source"]["label"]
    assert "overrideReasons" not in card
    assert "window closes 2021-12-27" in card["detail"]
    assert "no RDA was issued and no dispense recorded" in card["detail"]
    metrics = cds.get("/metrics").text
    wanted = 'rems_cds_cards_total{indicator="info",service="clozapine-rems-order-sign"} 1.0'
    assert wanted in metrics


def test_prefetched_labs_are_stored_once_and_then_need_no_write(
    cds: httpx.Client, application: Any
) -> None:
    body = hook_request("order-sign.json")
    cards_of(call(cds, "clozapine-rems-order-sign", body))
    assert len(kept_cards(application.engine, 1)) == 1
    stored = observations(application.engine)
    taken = {(o.code, o.value, o.unit) for o in stored if o.channel == "cds-hooks"}
    assert taken == {("751-8", "3.1", "10*3/uL"), ("751-8", "2.7", "10*3/uL")}
    writer = application.writer
    units = writer.units
    again = copy.deepcopy(body) | {"hookInstance": "5c0e7d8a-1f2b-4c3d-9e4f-a5b6c7d8e9f0"}
    (card,) = cards_of(call(cds, "clozapine-rems-order-sign", again))
    assert card["indicator"] == "info"
    assert len(kept_cards(application.engine, 2)) == 2
    # the labs are not written again: the only unit of work was keeping the card (counted just
    # after its COMMIT, so a moment after the card can be read)
    deadline = time.monotonic() + 5
    while writer.units == units and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.units - units == 1
    assert observations(application.engine) == stored


def test_a_low_anc_needs_a_rationale_and_offers_a_cbc(cds: httpx.Client) -> None:
    response = call(
        cds, "clozapine-rems-order-sign", hook_request("order-sign-low-anc.json"),
        **{"X-Clinical-Time": LOW_ANC_NOW},
    )  # fmt: skip
    (card,) = cards_of(response)
    assert card["indicator"] == "warning"
    assert card["summary"].startswith("Clozapine rationale required (ANC below threshold)")
    assert "ANC 900/µL (moderate neutropenia) on 2021-12-19" in card["summary"]
    assert len(card["summary"]) < 140
    assert "`ANC_BELOW_THRESHOLD`" in card["detail"]
    codes = [c["code"] for c in card["overrideReasons"]]
    assert codes[0] == "risk-benefit-ratio" and "mild_symptoms_only" in codes
    assert all(
        c["system"] == "urn:rems-gateway:cds-override-reason" for c in card["overrideReasons"]
    )
    (suggestion,) = card["suggestions"]
    order = suggestion["actions"][0]["resource"]
    assert order["resourceType"] == "ServiceRequest"
    assert order["code"]["coding"][0]["code"] == "57021-8"
    assert (order["status"], order["intent"]) == ("draft", "order")
    assert card["selectionBehavior"] == "at-most-one"


def test_no_clozapine_order_no_cards(cds: httpx.Client) -> None:
    body = hook_request("order-sign-not-clozapine.json")
    assert cards_of(call(cds, "clozapine-rems-order-sign", body)) == []


def test_order_select_decides_only_the_selected_order(cds: httpx.Client) -> None:
    (card,) = cards_of(call(cds, "clozapine-rems-order-select", hook_request("order-select.json")))
    assert card["indicator"] == "info"
    assert "ANC 2,400/µL (normal) on 2021-12-17" in card["summary"]


def test_discharge_from_the_inpatient_only_pharmacy_shows_the_day_cap(cds: httpx.Client) -> None:
    body = hook_request("encounter-discharge.json")
    (card,) = cards_of(call(cds, "clozapine-rems-encounter-discharge", body))
    assert card["indicator"] == "critical"
    assert "over the discharge day cap" in card["summary"]
    assert "at most 7 days" in card["detail"]
    (reduce,) = card["suggestions"]
    action = reduce["actions"][0]
    assert action["type"] == "update"
    assert action["resource"]["dispenseRequest"]["expectedSupplyDuration"]["value"] == 7


def test_a_discharge_within_the_cap_would_be_authorized_and_names_the_cap(
    cds: httpx.Client,
) -> None:
    body = hook_request("encounter-discharge.json")
    for entry in body["prefetch"]["medications"]["entry"]:
        entry["resource"]["dispenseRequest"]["expectedSupplyDuration"]["value"] = 7
    (card,) = cards_of(call(cds, "clozapine-rems-encounter-discharge", body))
    assert card["indicator"] == "info"
    assert card["summary"].endswith("· at most 7 days at discharge")
    assert "**Discharge supply**: at most 7 days" in card["detail"]


def test_an_order_whose_prescriber_cannot_be_found_says_so(cds: httpx.Client) -> None:
    body = hook_request("order-sign.json")
    body["prefetch"]["practitioner"] = None  # and its fhirServer is not one to fetch from
    (card,) = cards_of(call(cds, "clozapine-rems-order-sign", body))
    assert card["indicator"] == "warning"
    assert card["summary"].startswith("Clozapine prescriber unknown: ANC 3,100/µL")
    assert "names no prescriber NPI" in card["detail"]


def test_patient_view_shows_the_monitoring_state(cds: httpx.Client) -> None:
    (card,) = cards_of(call(cds, "clozapine-rems-patient-view", hook_request("patient-view.json")))
    assert card["indicator"] == "info"
    assert "next ANC due" in card["summary"] and "PSF window ends 2021-12-27" in card["summary"]


def test_an_old_cds_hooks_1_0_request_is_read(cds: httpx.Client) -> None:
    body = hook_request("order-sign-cds-hooks-1.0.json")
    (card,) = cards_of(call(cds, "clozapine-rems-order-sign", body))
    assert card["indicator"] == "info"


def test_a_patient_not_enrolled_is_denied(cds: httpx.Client) -> None:
    body = hook_request("order-sign.json")
    for identifier in body["prefetch"]["patient"]["identifier"]:
        identifier["value"] = "NOBODY-" + identifier["value"]
    (card,) = cards_of(call(cds, "clozapine-rems-order-sign", body))
    assert card["indicator"] == "critical"
    assert card["summary"].startswith("Clozapine denied (not enrolled")
    assert "Enroll the patient" in card["detail"]
    held = cds.get("/admin/review").json()
    assert held["total"] == 0  # the EHR's copies of its labs are not held per hook call


def test_a_psf_out_of_window_is_denied_with_the_next_step(cds: httpx.Client) -> None:
    body = hook_request("order-sign.json")
    (card,) = cards_of(
        call(cds, "clozapine-rems-order-sign", body, **{"X-Clinical-Time": "2022-01-05T10:00:00Z"})
    )
    assert card["indicator"] == "critical"
    assert "PSF out of window" in card["summary"]
    assert "Submit the monthly PSF — the window closed 2021-12-27." in card["detail"]


def test_without_the_patient_the_service_answers_412(cds: httpx.Client) -> None:
    response = call(cds, "clozapine-rems-order-sign", hook_request("order-sign-no-prefetch.json"))
    assert response.status_code == 412, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "patient" in outcome["issue"][0]["diagnostics"]


def test_a_request_for_another_hook_is_400(cds: httpx.Client) -> None:
    response = call(cds, "clozapine-rems-patient-view", hook_request("order-sign.json"))
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["hook"]
    assert cds.post("/cds-services/nope", json={}).status_code == 404


# --- feedback ----------------------------------------------------------------------------------

FEEDBACK = "/cds-services/clozapine-rems-order-sign/feedback"


def override(card: str, code: str = "risk-benefit-ratio", at: str = LOW_ANC_NOW) -> dict:
    reason = {"system": "urn:rems-gateway:cds-override-reason", "code": code}
    return {
        "card": card,
        "outcome": "overridden",
        "overrideReason": {"reason": reason, "userComment": "Stable for six years; recovers."},
        "outcomeTimestamp": at,
    }


def low_anc_card(cds: httpx.Client, application: Any) -> dict[str, Any]:
    response = call(
        cds, "clozapine-rems-order-sign", hook_request("order-sign-low-anc.json"),
        **{"X-Clinical-Time": LOW_ANC_NOW},
    )  # fmt: skip
    (card,) = cards_of(response)
    kept_cards(application.engine, 1)
    return card


def audit_kinds(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [r.kind for r in conn.execute(select(t.AuditRecord.__table__)).all()]


def drafts(cds: httpx.Client, service: RemsService) -> list[dict[str, Any]]:
    patient = run(service.load_registry(example_registry(), Source("test")))["P1"]
    found = cds.get(
        "/fhir/QuestionnaireResponse", params={"patient": patient, "status": "in-progress"}
    )
    assert found.status_code == 200, found.text
    return [e["resource"] for e in found.json().get("entry", [])]


def test_an_override_with_a_reason_becomes_the_rationale_of_the_psf_draft(
    cds: httpx.Client, application: Any, service: RemsService
) -> None:
    card = low_anc_card(cds, application)
    answered = cds.post(FEEDBACK, json={"feedback": [override(card["uuid"])]})
    assert answered.status_code == 200, answered.text
    (draft,) = drafts(cds, service)
    (rationale,) = [i for i in draft["item"] if i["linkId"] == "rationale"]
    parts = {p["linkId"]: p["answer"][0] for p in rationale["item"]}
    assert parts["rationale.reason"]["valueCoding"]["code"] == "benefit_outweighs_risk"
    assert parts["rationale.text"]["valueString"] == "Stable for six years; recovers."
    (source,) = draft["extension"]
    assert source["url"] == "urn:rems-gateway:fhir:rationale-source"
    assert {"url": "card", "valueString": card["uuid"]} in source["extension"]
    assert not any(i["linkId"] == "signature" for i in draft["item"])  # pending the prescriber
    assert audit_kinds(application.engine).count("cds-feedback") == 1


def test_the_same_feedback_twice_is_recorded_once_and_an_unknown_card_is_404(
    cds: httpx.Client, application: Any
) -> None:
    card = low_anc_card(cds, application)
    accepted = {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": LOW_ANC_NOW}
    accepted["acceptedSuggestions"] = [{"id": card["suggestions"][0]["uuid"]}]
    for _ in range(2):
        assert cds.post(FEEDBACK, json={"feedback": [accepted]}).status_code == 200
    assert audit_kinds(application.engine).count("cds-feedback") == 1
    assert 'rems_cds_feedback_total{outcome="accepted"} 1.0' in cds.get("/metrics").text
    unknown = {**accepted, "card": "3f0f6d7e-0000-4000-8000-000000000000"}
    refused = cds.post(FEEDBACK, json={"feedback": [accepted, unknown]})
    assert refused.status_code == 404
    assert refused.json()["resourceType"] == "OperationOutcome"
    other_service = "/cds-services/clozapine-rems-order-select/feedback"
    assert cds.post(other_service, json={"feedback": [accepted]}).status_code == 404
    with application.engine.connect() as conn:
        assert len(conn.execute(select(t.CdsFeedback.__table__)).all()) == 1


def test_malformed_feedback_is_400_naming_the_place(cds: httpx.Client) -> None:
    bad = {"feedback": [{"card": "x", "outcome": "ignored", "outcomeTimestamp": NOW}]}
    refused = cds.post(FEEDBACK, json=bad)
    assert refused.status_code == 400
    assert refused.json()["issue"][0]["expression"] == ["feedback[0].outcome"]
    naive = {"feedback": [{"card": "x", "outcome": "accepted", "outcomeTimestamp": "2021-12-20"}]}
    assert cds.post(FEEDBACK, json=naive).status_code == 400


# --- prefetch the EHR could not send: fetched from its FHIR server ------------------------------


@pytest.fixture
def ehr_fhir() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """The EHR's FHIR server on a loopback port, serving order-sign.json's prefetch; yields its
    base and the (path?query, Authorization) of every request it got."""
    served = hook_request("order-sign.json")["prefetch"]
    asked: list[tuple[str, str]] = []

    async def answer(request: Request) -> Response:
        query = f"?{request.url.query}" if request.url.query else ""
        asked.append((request.url.path + query, request.headers.get("authorization", "")))
        kind = request.url.path.rsplit("/", 2)[-2] if "/" in request.url.path else ""
        body = {"Patient": served["patient"], "Practitioner": served["practitioner"]}.get(kind)
        if request.url.path.endswith("/Observation"):
            body = served["labs"]
        status = 200 if body is not None else 404
        return Response(json.dumps(body or {}), status, media_type="application/fhir+json")

    app = Starlette(routes=[Route("/{path:path}", answer)])
    with serving(app) as base:
        yield f"{base}/api/FHIR/R4", asked


def test_null_prefetch_is_fetched_from_an_allowed_fhir_server_with_the_ehrs_token(
    cds: httpx.Client, ehr_fhir: tuple[str, list[tuple[str, str]]]
) -> None:
    base, asked = ehr_fhir
    body = hook_request("order-sign-no-prefetch.json") | {"fhirServer": base}
    (card,) = cards_of(call(cds, "clozapine-rems-order-sign", body))
    assert card["indicator"] == "info"
    assert "ANC 3,100/µL (normal) on 2021-12-16" in card["summary"]
    token = f"Bearer {body['fhirAuthorization']['access_token']}"
    paths = [path for path, _ in asked]
    assert paths[0] == f"/api/FHIR/R4/Patient/{body['context']['patientId']}"
    assert any(p.startswith("/api/FHIR/R4/Observation?patient=") for p in paths)
    assert all(authorization == token for _, authorization in asked)


def test_an_order_part_that_cannot_be_read_is_said_on_the_card(cds: httpx.Client) -> None:
    body = hook_request("order-sign.json")
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    order["dispenseRequest"]["expectedSupplyDuration"] = {"value": 1, "unit": "month"}
    (card,) = cards_of(call(cds, "clozapine-rems-order-sign", body))
    assert "**The order could not be read in full**" in card["detail"]
    assert "days (d) or weeks (wk)" in card["detail"]
