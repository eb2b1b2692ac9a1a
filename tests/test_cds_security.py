"""The CDS services behind the EHR's JWT, end to end (docs/contracts.md §6 "Security"): the real
gateway app on a loopback port with a `cds_clients` file — a hook with the EHR's signed JWT is
answered, an unsigned or foreign one is 401 with an OperationOutcome, discovery is public, and
feedback takes its own audience."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
import yaml
from sqlalchemy import Engine

from gateway.app.service import RemsService
from gateway.app.values import Source
from tests.conftest import run, sqlite_only
from tests.http_server import running_app
from tests.smart_tokens import (
    PUBLIC_BASE_URL,
    TestClient,
    access_token,
    bearer,
    ec_key,
    smart_settings,
)
from tests.test_cds_auth import EHR, ehr, public_jwk
from tests.test_cds_hooks import NOW, example_registry, hook_request, kept_cards

pytestmark = sqlite_only  # who may call: the JWT checks live in the process, not the store
SERVICE = "clozapine-rems-order-sign"
PUBLIC = PUBLIC_BASE_URL
SIGNER = ehr()
EHR_FHIR_CLIENT = TestClient.rsa("general-hospital-ehr", ["system/Patient.cru"])


@pytest.fixture
def gateway(service: RemsService, engine: Engine, tmp_path: Path) -> Iterator[httpx.Client]:
    run(service.load_registry(example_registry(), Source("test")))
    clients = tmp_path / "cds-clients.yaml"
    entry = {
        "iss": EHR,
        "keys": [public_jwk(SIGNER)],
        "description": "General Hospital EHR",
        "fhir_client": EHR_FHIR_CLIENT.client_id,  # the same EHR as a FHIR client
    }
    clients.write_text(yaml.safe_dump({"clients": [entry]}))
    settings = smart_settings(tmp_path, [EHR_FHIR_CLIENT]) | {"cds_clients": clients}
    with running_app(service, engine, **settings) as base, httpx.Client(base_url=base) as client:
        client.headers["X-Clinical-Time"] = NOW
        yield client


def url(feedback: bool = False) -> str:
    return f"{PUBLIC}/cds-services/{SERVICE}" + ("/feedback" if feedback else "")


def hook(client: httpx.Client, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post(
        f"/cds-services/{SERVICE}", json=hook_request("order-sign.json"), headers=headers
    )


def test_the_ehrs_signed_jwt_is_answered_and_discovery_is_public(gateway: httpx.Client) -> None:
    assert gateway.get("/cds-services").status_code == 200
    answered = hook(gateway, SIGNER.assertion(url()))
    assert answered.status_code == 200, answered.text
    assert answered.json()["cards"][0]["indicator"] == "info"


@pytest.mark.parametrize(
    "token, refusal",
    [
        (None, "send the CDS client's JWT"),
        ("unsigned", "RS384 or ES384"),
        ("foreign", "signature does not match"),
        ("other-service", "aud"),
        ("expired", "expired"),
    ],
)
def test_unsigned_foreign_or_stale_jwts_are_refused(
    gateway: httpx.Client, token: str | None, refusal: str
) -> None:
    made = {
        None: None,
        "unsigned": jwt.encode(
            jwt.decode(SIGNER.assertion(url()), options={"verify_signature": False}), None, "none"
        ),
        "foreign": SIGNER.assertion(url(), key=ec_key()),
        "other-service": SIGNER.assertion(f"{PUBLIC}/cds-services/clozapine-rems-patient-view"),
        "expired": SIGNER.assertion(url(), exp=1_600_000_000, iat=1_599_999_900),
    }[token]
    refused = hook(gateway, made)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    outcome = refused.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert refusal in outcome["issue"][0]["diagnostics"]


def test_feedback_needs_the_jwt_with_the_feedback_audience_or_the_services(
    gateway: httpx.Client, application: object
) -> None:
    card = hook(gateway, SIGNER.assertion(url())).json()["cards"][0]
    kept_cards(application.engine, 1)  # type: ignore[attr-defined]
    body = {"feedback": [{"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": NOW}]}
    path = f"/cds-services/{SERVICE}/feedback"
    assert gateway.post(path, json=body).status_code == 401
    for audience in (url(feedback=True), url()):
        bearer = {"Authorization": f"Bearer {SIGNER.assertion(audience)}"}
        assert gateway.post(path, json=body, headers=bearer).status_code == 200


def test_without_prefetch_the_ehrs_own_fhir_patient_names_the_patient(
    gateway: httpx.Client,
) -> None:
    """The EHR stored its Patient as a SMART client (§5): context.patientId is that Patient."""
    body = hook_request("order-sign.json")
    patient = body["prefetch"].pop("patient")
    token = access_token(str(gateway.base_url), EHR_FHIR_CLIENT, "system/Patient.cru")
    stored = gateway.put(
        f"/fhir/Patient/{patient['id']}",
        json=patient,
        headers=bearer(token) | {"Content-Type": "application/fhir+json"},
    )
    assert stored.status_code in (200, 201), stored.text
    headers = {"Authorization": f"Bearer {SIGNER.assertion(url())}"}
    answered = gateway.post(f"/cds-services/{SERVICE}", json=body, headers=headers)
    assert answered.status_code == 200, answered.text
    (card,) = answered.json()["cards"]
    assert card["indicator"] == "info"
    assert "ANC 3,100/µL (normal) on 2021-12-16" in card["summary"]
