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
from tests.conftest import run
from tests.http_server import running_app
from tests.smart_tokens import ec_key
from tests.test_cds_auth import EHR, ehr, public_jwk
from tests.test_cds_hooks import NOW, example_registry, hook_request, kept_cards

SERVICE = "clozapine-rems-order-sign"
PUBLIC = "https://rems.generalhospital.example.org"
SIGNER = ehr()


@pytest.fixture
def gateway(service: RemsService, engine: Engine, tmp_path: Path) -> Iterator[httpx.Client]:
    run(service.load_registry(example_registry(), Source("test")))
    clients = tmp_path / "cds-clients.yaml"
    entry = {"iss": EHR, "keys": [public_jwk(SIGNER)], "description": "General Hospital EHR"}
    clients.write_text(yaml.safe_dump({"clients": [entry]}))
    settings = {"auth": "smart", "cds_clients": clients, "public_base_url": PUBLIC}
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
