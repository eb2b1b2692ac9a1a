"""The RDA's life over FHIR (docs/contracts.md §5) on a real HTTP server: MedicationDispense
against an RDA, a MedicationRequest updated to cancelled/stopped, and `$rems-etasu` reporting the
RDA's state."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from gateway.app.service import RemsService
from gateway.app.values import Source
from tests.conftest import run
from tests.http_server import running_app
from tests.test_fhir_dispense import decision_parts, extension_parts, fixture, post, registry

DISPENSED = "urn:rems-gateway:fhir:dispense-outcome"
RDA_SYSTEM = "urn:rems-gateway:rda"


@pytest.fixture
def fhir(service: RemsService, engine: Engine) -> Iterator[httpx.Client]:
    run(service.load_registry(registry(), Source("test")))
    with running_app(service, engine) as base, httpx.Client(base_url=base + "/fhir") as client:
        yield client


def ordered(client: httpx.Client) -> tuple[str, str]:
    """An authorized MedicationRequest (2022-03-02 10:00, 30 days): its id and RDA number."""
    created = post(client, fixture("medicationrequest-outpatient.json"))
    assert created.status_code == 201, created.text
    decision = decision_parts(created.json()["extension"])
    return created.json()["id"], decision["rda"]["value"]


def dispense(
    rda: str | None = None, prescription: str | None = None, **changes: Any
) -> dict[str, Any]:
    body = copy.deepcopy(fixture("medicationdispense-rda.json"))
    if rda is not None:
        body["authorizingPrescription"] = [{"identifier": {"system": RDA_SYSTEM, "value": rda}}]
    if prescription is not None:
        body["authorizingPrescription"] = [{"reference": f"MedicationRequest/{prescription}"}]
    return body | changes


def outcome(body: dict[str, Any]) -> dict[str, Any]:
    """Our dispense outcome extension as {url: value} (reasons and warnings as lists of codes)."""
    return extension_parts(body["extension"], DISPENSED)


def send(client: httpx.Client, body: dict[str, Any], **headers: str) -> httpx.Response:
    return post(client, body, at="2022-03-02T14:00:00Z", path="/MedicationDispense", **headers)


def cancel(client: httpx.Client, resource_id: str, status: str = "cancelled") -> httpx.Response:
    read = client.get(f"/MedicationRequest/{resource_id}").json()
    body = fixture("medicationrequest-outpatient.json") | {"id": resource_id, "status": status}
    body["extension"] = read.get("extension", [])
    sent = {"Content-Type": "application/fhir+json", "X-Clinical-Time": "2022-03-02T12:00:00Z"}
    return client.put(f"/MedicationRequest/{resource_id}", json=body, headers=sent)


def etasu_state(client: httpx.Client, case_number: str, at: str) -> str | None:
    parameters = {
        "resourceType": "Parameters",
        "parameter": [{"name": "case_number", "valueString": case_number}],
    }
    response = post(client, parameters, at=at, path="/GuidanceResponse/$rems-etasu")
    assert response.status_code == 200, response.text
    guidance = response.json()["parameter"][0]["resource"]
    output = guidance["contained"][0]["parameter"]
    state = next((p["valueCode"] for p in output if p["name"] == "rda_state"), None)
    extension = next(
        (e["valueCode"] for e in guidance["extension"] if e["url"].endswith("rda-state")), None
    )
    assert state == extension
    return state


def test_a_dispense_against_its_rda_is_recorded_once(fhir: httpx.Client) -> None:
    _, number = ordered(fhir)
    first = send(fhir, dispense(number))
    assert first.status_code == 201, first.text
    assert first.headers["location"].startswith("/fhir/MedicationDispense/")
    parts = outcome(first.json())
    assert (parts["outcome"], parts["rda"]["value"], parts["rda-state"]) == (
        "recorded",
        number,
        "dispensed",
    )
    read = fhir.get(first.headers["location"].removeprefix("/fhir").split("/_history")[0])
    assert outcome(read.json())["outcome"] == "recorded"
    second = send(
        fhir,
        dispense(number, identifier=[{"system": "urn:x", "value": "DSP-2"}])
        | {"whenHandedOver": "2022-03-03T09:00:00Z"},
        Prefer="return=OperationOutcome",
    )
    assert second.status_code == 201
    errors = [i for i in second.json()["issue"] if i["severity"] == "error"]
    assert [e["details"]["coding"][0]["code"] for e in errors] == ["RDA_ALREADY_DISPENSED"]


def test_the_same_dispense_again_is_answered_from_the_store(fhir: httpx.Client) -> None:
    _, number = ordered(fhir)
    first = send(fhir, dispense(number))
    again = send(fhir, dispense(number))
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["location"] == first.headers["location"]
    assert outcome(again.json()) == outcome(first.json())


def test_a_dispense_naming_the_medication_request_finds_its_rda(fhir: httpx.Client) -> None:
    resource_id, number = ordered(fhir)
    parts = outcome(send(fhir, dispense(prescription=resource_id)).json())
    assert (parts["outcome"], parts["rda"]["value"]) == ("recorded", number)


def test_more_days_than_authorized_is_refused(fhir: httpx.Client) -> None:
    _, number = ordered(fhir)
    days = {"value": 31, "system": "http://unitsofmeasure.org", "code": "d"}
    response = send(fhir, dispense(number, daysSupply=days))
    assert response.status_code == 201
    parts = outcome(response.json())
    assert (parts["outcome"], parts["reason"], parts["rda-state"]) == (
        "refused",
        ["RDA_SUPPLY_EXCEEDED"],
        "issued",
    )


def test_a_dispense_after_the_rdas_validity_is_refused(fhir: httpx.Client) -> None:
    _, number = ordered(fhir)
    parts = outcome(send(fhir, dispense(number, whenHandedOver="2022-03-10T09:00:00Z")).json())
    assert (parts["outcome"], parts["reason"], parts["rda-state"]) == (
        "refused",
        ["RDA_EXPIRED"],
        "expired",
    )


def test_a_clozapine_dispense_without_a_known_rda_carries_the_warning(fhir: httpx.Client) -> None:
    response = send(fhir, dispense("RDA-NOBODY"), Prefer="return=OperationOutcome")
    assert response.status_code == 201
    warnings = [i for i in response.json()["issue"] if i["severity"] == "warning"]
    assert [w["details"]["coding"][0]["code"] for w in warnings] == ["DISPENSE_WITHOUT_RDA"]


def test_a_dispense_of_another_drug_is_ignored(fhir: httpx.Client) -> None:
    _, number = ordered(fhir)
    other = {
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "310965"}]
    }
    response = send(fhir, dispense(number, medicationCodeableConcept=other))
    assert response.status_code == 201
    assert outcome(response.json())["outcome"] == "ignored"
    assert outcome(send(fhir, dispense(number)).json())["outcome"] == "recorded"


def test_an_undecidable_dispense_is_422(fhir: httpx.Client) -> None:
    weeks = {"value": 1, "system": "http://unitsofmeasure.org", "code": "mo"}
    response = send(fhir, dispense(daysSupply=weeks))
    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"] == ["MedicationDispense.daysSupply"]


def test_a_cancelled_medication_request_voids_its_rda(fhir: httpx.Client) -> None:
    resource_id, number = ordered(fhir)
    assert etasu_state(fhir, number, "2022-03-02T11:00:00Z") == "issued"
    ended = cancel(fhir, resource_id)
    assert ended.status_code == 200, ended.text
    assert ended.headers["etag"] == 'W/"2"'
    kept = decision_parts(ended.json()["extension"])
    assert (kept["outcome"], kept["rda"]["value"]) == ("authorized", number)
    assert ended.json()["status"] == "cancelled"
    again = cancel(fhir, resource_id)
    assert (again.status_code, again.headers["etag"]) == (200, 'W/"2"')
    assert etasu_state(fhir, number, "2022-03-02T13:00:00Z") == "voided"
    parts = outcome(send(fhir, dispense(number)).json())
    assert (parts["outcome"], parts["reason"]) == ("refused", ["RDA_VOIDED"])


def test_a_stopped_medication_request_voids_its_rda(fhir: httpx.Client) -> None:
    resource_id, number = ordered(fhir)
    assert cancel(fhir, resource_id, "stopped").status_code == 200
    assert etasu_state(fhir, number, "2022-03-02T13:00:00Z") == "voided"


def test_an_update_that_is_no_end_of_the_order_is_422(fhir: httpx.Client) -> None:
    resource_id, _ = ordered(fhir)
    assert cancel(fhir, resource_id, "on-hold").status_code == 422
    assert cancel(fhir, "nobody").status_code == 404


def test_etasu_reports_a_dispensed_rda_and_an_expired_one(fhir: httpx.Client) -> None:
    _, number = ordered(fhir)
    assert etasu_state(fhir, number, "2022-03-10T10:00:00Z") == "expired"  # before any job
    send(fhir, dispense(number))
    assert etasu_state(fhir, number, "2022-03-10T10:00:00Z") == "dispensed"


def test_a_medication_request_sent_again_cancelled_ends_the_order_its_identifier_names(
    fhir: httpx.Client,
) -> None:
    resource_id, number = ordered(fhir)
    body = fixture("medicationrequest-outpatient.json") | {"status": "cancelled"}
    ended = post(fhir, body, at="2022-03-02T12:00:00Z")
    assert ended.status_code == 200, ended.text
    assert ended.json()["id"] == resource_id and ended.headers["etag"] == 'W/"2"'
    assert decision_parts(ended.json()["extension"])["rda"]["value"] == number
    assert etasu_state(fhir, number, "2022-03-02T13:00:00Z") == "voided"


def test_cancelling_an_order_never_decided_is_order_not_found(fhir: httpx.Client) -> None:
    body = fixture("medicationrequest-outpatient.json") | {"status": "stopped"}
    response = post(fhir, body, at="2022-03-02T12:00:00Z")
    assert response.status_code == 422
    (issue,) = response.json()["issue"]
    assert issue["details"]["coding"][0]["code"] == "ORDER_NOT_FOUND"
