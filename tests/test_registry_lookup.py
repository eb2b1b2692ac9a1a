"""The certification lookup over real HTTP with SMART tokens (docs/contracts.md §5, docs/rules.md
§10): a wholesaler's client finds certified pharmacies and sees no patient data; a registry
change shows on the next lookup; every lookup is audited with the client that asked; and
`Organization/$rems-ship-check`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from gateway.app.service import RemsService
from gateway.app.values import Source
from rems_core.registry import registry_from
from tests.conftest import committed, run
from tests.http_server import running_app
from tests.smart_tokens import TestClient, access_token, bearer, smart_settings

NPI = "http://hl7.org/fhir/sid/us-npi"
DEA = "http://hl7.org/fhir/sid/us-dea"
GLN = "urn:oid:1.3.160"
CERTIFICATION = "urn:rems-gateway:fhir:rems-certification"
HOSPITAL, CORNER, PRESCRIBER = "1588667638", "1679576722", "1234567893"
LOOKUP_SCOPES = "system/Organization.rs system/Practitioner.rs system/PractitionerRole.rs"
PATIENT_DATA = ("Patient", "Observation", "MedicationRequest", "QuestionnaireResponse", "Task")
WHOLESALER = TestClient.ec("acme-wholesale", LOOKUP_SCOPES.split())
ADMIN = TestClient.ec("registry-operator", ["admin"])
EHR = TestClient.ec("hospital-ehr", ["system/Organization.cru"])
NOW = {"X-Clinical-Time": "2022-06-01T12:00:00Z"}


def registry(hospital_outpatient: bool = True) -> dict[str, Any]:
    return {
        "prescribers": [
            {
                "npi": PRESCRIBER,
                "name": "Ann Lee",
                "certified": True,
                "certified_on": "2021-11-16",
                "designees": [{"id": "D1", "name": "Bo Park"}],
            }
        ],
        "pharmacies": [
            {
                "npi": HOSPITAL,
                "name": "General Hospital Pharmacy",
                "enrollments": [
                    {
                        "setting": "inpatient",
                        "certified": True,
                        "certified_on": "2021-11-16",
                        "recertify_by": "2023-11-16",
                    },
                    {"setting": "outpatient", "certified": hospital_outpatient},
                ],
            },
            {
                "npi": CORNER,
                "name": "Corner Drugstore",
                "enrollments": [{"setting": "outpatient", "certified": False}],
            },
        ],
        "wholesalers": [
            {
                "id": "W1",
                "name": "Acme Wholesale",
                "identifiers": [
                    {"system": DEA, "value": "RA1234563"},
                    {"system": GLN, "value": "0614141000005"},
                ],
                "enrolled_on": "2021-11-10",
                "certified": True,
                "certified_on": "2021-11-16",
                "recertify_by": "2022-06-10",
            }
        ],
        "distributors": [{"id": "DX", "name": "General Distribution", "certified": False}],
    }


@dataclass
class Gateway:
    base: str
    token: str
    admin: str

    def get(self, path: str, **params: str) -> httpx.Response:
        headers = bearer(self.token) | NOW
        return httpx.get(self.base + "/fhir" + path, params=params, headers=headers)

    def ship_check(self, *parameters: dict[str, Any]) -> httpx.Response:
        body = {"resourceType": "Parameters", "parameter": list(parameters)}
        headers = bearer(self.token) | NOW | {"Content-Type": "application/fhir+json"}
        return httpx.post(
            self.base + "/fhir/Organization/$rems-ship-check", json=body, headers=headers
        )


@pytest.fixture
def gateway(service: RemsService, engine: Engine, tmp_path: Path) -> Iterator[Gateway]:
    run(service.load_registry(registry_from(registry()), Source("test")))
    with running_app(service, engine, **smart_settings(tmp_path, [WHOLESALER, ADMIN, EHR])) as base:
        token = access_token(base, WHOLESALER, f"{LOOKUP_SCOPES} system/Patient.rs")
        yield Gateway(base, token, access_token(base, ADMIN, "admin"))


def ids(bundle: dict[str, Any]) -> list[str]:
    return [entry["resource"]["id"] for entry in bundle.get("entry", [])]


def certifications(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """Each certification extension as {sub-extension url: value}."""
    found = []
    for extension in resource.get("extension", []):
        if extension["url"] == CERTIFICATION:
            parts = {}
            for part in extension["extension"]:
                key = next(k for k in part if k.startswith("value"))
                parts[part["url"]] = part[key]
            found.append(parts)
    return found


def lookups(service: RemsService) -> list[Any]:
    records = committed(service, lambda store: list(store.audit_records()))
    return [r for r in records if r.kind in ("lookup", "ship_check")]


def test_a_wholesalers_client_finds_a_certified_pharmacy_by_npi(gateway: Gateway) -> None:
    found = gateway.get("/Organization", identifier=f"{NPI}|{HOSPITAL}")
    assert found.status_code == 200, found.text
    bundle = found.json()
    assert bundle["type"] == "searchset" and bundle["total"] == 1
    (pharmacy,) = (entry["resource"] for entry in bundle["entry"])
    assert pharmacy["id"] == f"pharmacy-{HOSPITAL}" and pharmacy["active"] is True
    assert pharmacy["type"][0]["coding"][0]["code"] == "pharmacy"
    assert certifications(pharmacy) == [
        {
            "setting": "inpatient",
            "certified": True,
            "certified-on": "2021-11-16",
            "recertify-by": "2023-11-16",
            "as-of": "2022-06-01",
        },
        {"setting": "outpatient", "certified": True, "as-of": "2022-06-01"},
    ]
    read = gateway.get(f"/Organization/pharmacy-{HOSPITAL}")
    assert read.status_code == 200 and read.json() == pharmacy


def test_the_lookup_scopes_see_no_patient_data(gateway: Gateway) -> None:
    """The token asked for system/Patient.rs too: the client is not allowed it, so it is not
    granted, and every patient resource is 403."""
    for resource_type in PATIENT_DATA:
        answer = gateway.get(f"/{resource_type}/any-id")
        assert answer.status_code == 403, (resource_type, answer.text)
    for searched in ("Patient", "Observation", "QuestionnaireResponse", "Task"):
        assert gateway.get(f"/{searched}", patient="Patient/RP-1").status_code == 403


def test_a_decertified_pharmacy_shows_as_not_certified_on_the_next_lookup(
    gateway: Gateway,
) -> None:
    before = gateway.get("/Organization", identifier=f"{NPI}|{HOSPITAL}").json()
    assert certifications(before["entry"][0]["resource"])[1]["certified"] is True
    update = httpx.post(
        gateway.base + "/admin/registry",
        json=registry(hospital_outpatient=False),
        headers=bearer(gateway.admin),
    )
    assert update.status_code == 200, update.text
    after = gateway.get(f"/Organization/pharmacy-{HOSPITAL}").json()
    assert certifications(after)[1] == {
        "setting": "outpatient",
        "certified": False,
        "as-of": "2022-06-01",
    }
    # the inpatient enrollment still holds: certified in one setting
    certified = gateway.get(
        "/Organization", type="pharmacy", **{"certification-status": "certified"}
    )
    assert ids(certified.json()) == [f"pharmacy-{HOSPITAL}"]


def test_search_by_name_type_and_certification_status(gateway: Gateway) -> None:
    assert ids(gateway.get("/Organization", name="gen").json()) == [
        f"pharmacy-{HOSPITAL}",
        "distributor-DX",
    ]
    assert ids(gateway.get("/Organization", type="wholesaler,distributor").json()) == [
        "wholesaler-W1",
        "distributor-DX",
    ]
    not_certified = gateway.get("/Organization", **{"certification-status": "not-certified"})
    assert ids(not_certified.json()) == [f"pharmacy-{CORNER}", "distributor-DX"]
    by_gln = gateway.get("/Organization", identifier=f"{GLN}|0614141000005").json()
    (wholesaler,) = (entry["resource"] for entry in by_gln["entry"])
    assert wholesaler["id"] == "wholesaler-W1"
    assert certifications(wholesaler) == [
        {
            "certified": True,
            "enrolled-on": "2021-11-10",
            "certified-on": "2021-11-16",
            "recertify-by": "2022-06-10",
            "as-of": "2022-06-01",
        }
    ]
    paged = gateway.get("/Organization", _count="2").json()
    assert paged["total"] == 4 and len(paged["entry"]) == 2
    assert "_offset=2" in next(link["url"] for link in paged["link"] if link["relation"] == "next")
    lapsed = gateway.get("/Organization", type="wholesaler", _at="2022-06-11").json()
    assert certifications(lapsed["entry"][0]["resource"])[0]["certified"] is False
    on_the_day = {"certification-status": "certified", "_at": "2022-06-10"}
    assert ids(gateway.get("/Organization", type="wholesaler", **on_the_day).json()) == [
        "wholesaler-W1"
    ]
    assert gateway.get("/Organization", _at="June").status_code == 400
    assert gateway.get("/Organization", type="hospital").status_code == 400
    assert gateway.get("/Organization", **{"certification-status": "maybe"}).status_code == 400


def test_prescribers_and_their_designees(gateway: Gateway) -> None:
    prescriber = gateway.get(f"/Practitioner/{PRESCRIBER}").json()
    assert prescriber["name"] == [{"text": "Ann Lee"}]
    assert certifications(prescriber)[0]["certified"] is True
    assert ids(gateway.get("/Practitioner", name="ANN").json()) == [PRESCRIBER]
    roles = gateway.get("/PractitionerRole", practitioner=f"Practitioner/{PRESCRIBER}").json()
    (role,) = (entry["resource"] for entry in roles["entry"])
    assert role["id"] == f"designee-D1-{PRESCRIBER}"
    assert role["practitioner"]["reference"] == f"Practitioner/{PRESCRIBER}"
    assert role["code"][0]["coding"][0]["code"] == "designee"
    assert gateway.get(f"/PractitionerRole/{role['id']}").json() == role
    assert gateway.get("/Practitioner/1245319599").status_code == 404


def test_every_lookup_is_audited_with_the_client_that_asked(
    gateway: Gateway, service: RemsService
) -> None:
    gateway.get("/Organization", identifier=f"{NPI}|{HOSPITAL}")
    gateway.get("/Organization/pharmacy-1245319599")  # nobody: audited too
    gateway.get("/Practitioner", name="ann")
    first, missed, third = lookups(service)
    assert [r.actor for r in (first, missed, third)] == ["acme-wholesale"] * 3
    assert {r.channel for r in (first, missed, third)} == {"fhir"}
    assert (first.outcome, first.input_ref) == ("found", f"Organization/pharmacy-{HOSPITAL}")
    assert (missed.outcome, missed.input_ref) == ("none", "")
    assert (third.input_ref, third.subject) == (f"Practitioner/{PRESCRIBER}", None)
    assert "Ann" not in third.input_ref and len(third.input_hash) == 64


def test_ship_check_allowed_refused_and_audited(gateway: Gateway, service: RemsService) -> None:
    wholesaler = {"name": "wholesaler", "valueIdentifier": {"system": DEA, "value": "RA1234563"}}
    allowed = gateway.ship_check(
        wholesaler, {"name": "pharmacy", "valueIdentifier": {"system": NPI, "value": HOSPITAL}}
    )
    assert allowed.status_code == 200, allowed.text
    answer = {p["name"]: p for p in allowed.json()["parameter"]}
    assert answer["allowed"]["valueBoolean"] is True
    assert answer["rule_pack"]["valueString"] == "clozapine-rems-2021"
    # recertification is due within the pack's notice (2022-06-10, 9 days on)
    assert answer["warning"]["valueCoding"]["code"] == "WHOLESALER_RECERTIFICATION_DUE"
    refused = gateway.ship_check(
        {"name": "wholesaler", "valueReference": {"reference": "Organization/wholesaler-W1"}},
        {"name": "pharmacy", "valueString": CORNER},
        {"name": "date", "valueDate": "2022-07-01"},
    ).json()
    reasons = [p["valueCoding"]["code"] for p in refused["parameter"] if p["name"] == "reason"]
    allowed_ = next(p for p in refused["parameter"] if p["name"] == "allowed")
    assert allowed_["valueBoolean"] is False
    assert reasons == ["WHOLESALER_NOT_CERTIFIED", "PHARMACY_NOT_CERTIFIED"]
    checks = [r for r in lookups(service) if r.kind == "ship_check"]
    assert [(r.outcome, r.actor) for r in checks][:2] == [
        ("allowed", "acme-wholesale"),
        ("refused", "acme-wholesale"),
    ]
    assert checks[1].reasons == ("WHOLESALER_NOT_CERTIFIED", "PHARMACY_NOT_CERTIFIED")
    no_system = gateway.ship_check(
        {"name": "wholesaler", "valueIdentifier": {"value": "0614141000005"}},
        {"name": "pharmacy", "valueString": HOSPITAL},
    ).json()
    assert {"name": "party", "valueReference": {"reference": "Organization/wholesaler-W1"}} in (
        no_system["parameter"]
    )
    missing = gateway.ship_check({"name": "pharmacy", "valueString": CORNER})
    assert missing.status_code == 422


def test_an_id_the_registry_does_not_hold_reads_what_a_client_stored(gateway: Gateway) -> None:
    token = access_token(gateway.base, EHR, "system/Organization.cu")
    lab = {"resourceType": "Organization", "id": "north-lab", "name": "Northside Lab"}
    headers = bearer(token) | {"Content-Type": "application/fhir+json"}
    stored = httpx.put(gateway.base + "/fhir/Organization/north-lab", json=lab, headers=headers)
    assert stored.status_code == 201, stored.text
    read = gateway.get("/Organization/north-lab")
    assert read.status_code == 200 and read.json()["name"] == "Northside Lab"
    assert read.headers["ETag"] == 'W/"1"'
    assert gateway.get("/Organization/wholesaler-W9").status_code == 404
