"""Who may call the CDS services (docs/contracts.md §6 "Security"), on real sockets.

A tiny app serves `/cds-services/{id}` (and its `/feedback`) and answers 200 with the caller's
iss or 401 with the refusal; a second loopback server plays the EHR: its JWKS (for jku) and its
FHIR server (for fetching prefetch data).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.cds.auth import (
    CdsAuthError,
    DevelopmentCdsAuth,
    JwtCdsAuth,
    cds_authenticator,
    service_audiences,
)
from gateway.cds.clients import CdsClient, CdsClientsError, load_cds_clients
from gateway.cds.fhir_fetch import FetchFailed, FetchRefused, fetch
from gateway.config import ConfigError, Settings, load_settings
from tests.conftest import run
from tests.http_server import free_port, serving
from tests.smart_tokens import TestClient, ec_key, rsa_key

SERVICE = "clozapine-rems-order-sign"
EHR = "https://ehr.example.test/oauth"
EXAMPLE = Path(__file__).parent.parent / "fixtures" / "cds-hooks" / "clients.example.yaml"


# --- the EHR's side: keys, JWTs, a loopback server for its JWKS and its FHIR server ----------


def ehr(key: Any = None, iss: str = EHR) -> TestClient:
    """The EHR as a signer of CDS Hooks JWTs (its iss, its private key, a kid)."""
    return TestClient(iss, [], key or ec_key())


def public_jwk(signer: TestClient) -> dict[str, Any]:
    loader = ECAlgorithm if signer.algorithm == "ES384" else RSAAlgorithm
    return loader.to_jwk(signer.key.public_key(), as_dict=True) | {"kid": signer.kid}


@dataclass
class Remote:
    """A loopback server answering what a test scripts, remembering every request."""

    base: str = ""
    answers: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    asked: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def script(self, path: str, body: Any, status: int = 200) -> str:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answers[path] = (status, raw)
        return self.base + path

    def hits(self, path: str) -> int:
        return sum(1 for asked, _ in self.asked if asked.startswith(path))

    async def answer(self, request: Request) -> Response:
        query = f"?{request.url.query}" if request.url.query else ""
        self.asked.append((request.url.path + query, dict(request.headers)))
        status, body = self.answers.get(request.url.path, (404, b'{"resourceType": "x"}'))
        return Response(body, status, media_type="application/json")


@pytest.fixture(scope="module")
def remote_server() -> Iterator[Remote]:
    remote = Remote()
    app = Starlette(routes=[Route("/{path:path}", remote.answer)])
    with serving(app) as base:
        remote.base = base
        yield remote


@pytest.fixture
def remote(remote_server: Remote) -> Remote:
    remote_server.answers.clear()
    remote_server.asked.clear()
    return remote_server


# --- the gateway's side: a CDS service that only asks who is calling ------------------------


async def who(request: Request) -> Response:
    feedback = request.url.path.endswith("/feedback")
    audiences = service_audiences(request, None, request.path_params["service"], feedback)
    try:
        client = await request.app.state.auth.client(request, audiences)
    except CdsAuthError as exc:
        return PlainTextResponse(str(exc), 401)
    return PlainTextResponse(client.iss)


@dataclass
class Service:
    app: Starlette
    base: str

    def url(self, feedback: bool = False) -> str:
        return f"{self.base}/cds-services/{SERVICE}" + ("/feedback" if feedback else "")

    def call(self, auth: Any, token: str | None, feedback: bool = False) -> httpx.Response:
        self.app.state.auth = auth
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.post(self.url(feedback), json={}, headers=headers)

    def refusal(self, auth: Any, token: str | None) -> str:
        response = self.call(auth, token)
        assert response.status_code == 401, response.text
        return response.text


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    routes = [
        Route("/cds-services/{service}", who, methods=["POST"]),
        Route("/cds-services/{service}/feedback", who, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    with serving(app) as base:
        yield Service(app, base)


def client(**entry: Any) -> CdsClient:
    return CdsClient.model_validate({"iss": EHR} | entry)


def inline(signer: TestClient) -> JwtCdsAuth:
    return JwtCdsAuth({EHR: client(keys=[public_jwk(signer)])})


EC_EHR = ehr()


# --- refusals: one each ----------------------------------------------------------------------


def test_a_call_without_a_jwt_is_refused(service: Service) -> None:
    assert "send the CDS client's JWT" in service.refusal(inline(EC_EHR), None)


def test_a_bearer_that_is_no_jwt_is_refused(service: Service) -> None:
    assert service.refusal(inline(EC_EHR), "not-a-jwt") == "the bearer token is not a JWT"


def unsigned_claims(service: Service) -> dict[str, Any]:
    return jwt.decode(EC_EHR.assertion(service.url()), options={"verify_signature": False})


def test_an_unsigned_jwt_is_refused(service: Service) -> None:
    token = jwt.encode(unsigned_claims(service), None, "none")
    assert "RS384 or ES384" in service.refusal(inline(EC_EHR), token)


def test_a_jwt_signed_with_a_shared_secret_is_refused(service: Service) -> None:
    token = jwt.encode(unsigned_claims(service), secrets.token_bytes(48), "HS256")
    assert "RS384 or ES384" in service.refusal(inline(EC_EHR), token)


def test_an_unknown_issuer_is_refused(service: Service) -> None:
    token = EC_EHR.assertion(service.url(), iss="https://other.example.test")
    assert "iss is not a CDS client" in service.refusal(inline(EC_EHR), token)


def test_a_jwt_signed_with_another_key_is_refused(service: Service) -> None:
    token = EC_EHR.assertion(service.url(), key=ec_key())
    assert "signature does not match" in service.refusal(inline(EC_EHR), token)


def test_a_jku_not_allow_listed_is_refused_and_never_fetched(
    service: Service, remote: Remote
) -> None:
    listed = remote.script("/listed/jwks", {"keys": [public_jwk(EC_EHR)]})
    other = remote.script("/other/jwks", {"keys": [public_jwk(EC_EHR)]})
    auth = JwtCdsAuth({EHR: client(jku=[listed])})
    token = EC_EHR.assertion(service.url(), headers={"jku": other})
    assert "jku is not one of the CDS client's allowed" in service.refusal(auth, token)
    assert remote.asked == []


def test_an_unreachable_jku_is_refused(service: Service) -> None:
    down = f"http://127.0.0.1:{free_port()}/jwks"
    auth = JwtCdsAuth({EHR: client(jku=[down])})
    token = EC_EHR.assertion(service.url(), headers={"jku": down})
    assert service.refusal(auth, token) == f"the JWKS at {down} could not be reached"


def test_a_jwks_holding_private_keys_is_refused(service: Service, remote: Remote) -> None:
    private = ECAlgorithm.to_jwk(EC_EHR.key, as_dict=True) | {"kid": EC_EHR.kid}
    url = remote.script("/leaky/jwks", {"keys": [private]})
    auth = JwtCdsAuth({EHR: client(jku=[url])})
    assert "private key material" in service.refusal(auth, EC_EHR.assertion(service.url()))


@pytest.mark.parametrize(
    ("claims", "problem"),
    [
        ({"exp": int(time.time()) - 120}, "the JWT expired"),
        ({"exp": int(time.time()) + 3600}, "the JWT's exp is more than five minutes ahead"),
        ({"iat": int(time.time()) + 120}, "the JWT's iat is in the future"),
        ({"jti": None}, "the JWT needs a jti claim"),
        ({"jti": ""}, "the JWT needs a jti"),
    ],
    ids=["expired", "exp-too-far", "iat-future", "no-jti", "empty-jti"],
)
def test_a_jwt_with_bad_times_or_no_jti_is_refused(
    service: Service, claims: dict[str, Any], problem: str
) -> None:
    token = EC_EHR.assertion(service.url(), **claims)
    assert service.refusal(inline(EC_EHR), token) == problem


def test_a_jwt_for_another_service_is_refused(service: Service) -> None:
    token = EC_EHR.assertion(service.base + "/cds-services/another")
    assert service.refusal(inline(EC_EHR), token) == f"the JWT's aud must be {service.url()}"


def test_a_replayed_jwt_is_refused(service: Service) -> None:
    auth, token = inline(EC_EHR), EC_EHR.assertion(service.url())
    assert service.call(auth, token).status_code == 200
    assert service.refusal(auth, token) == "this JWT (its jti) was already used"


@pytest.mark.parametrize("member", ["jwk", "x5u"])
def test_a_jwt_bringing_its_own_key_is_refused(service: Service, member: str) -> None:
    value = public_jwk(EC_EHR) if member == "jwk" else "https://ehr.example.test/cert.pem"
    token = EC_EHR.assertion(service.url(), headers={member: value})
    assert "may not carry its own key" in service.refusal(inline(EC_EHR), token)


# --- acceptance ------------------------------------------------------------------------------


def test_an_rs384_jwt_checked_with_an_inline_pem_key_is_accepted(service: Service) -> None:
    signer = ehr(rsa_key("cds-ehr"))
    pem = signer.key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    auth = JwtCdsAuth({EHR: client(keys=[{"pem": pem.decode(), "kid": signer.kid}])})
    response = service.call(auth, signer.assertion(service.url()))
    assert (response.status_code, response.text) == (200, EHR)


def test_an_es384_jwt_checked_with_a_jwks_file_is_accepted(
    service: Service, tmp_path: Path
) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ehr.json").write_text(json.dumps({"keys": [public_jwk(EC_EHR)]}))
    entry = {"iss": EHR, "jwks_file": "keys/ehr.json"}
    (tmp_path / "cds.yaml").write_text(yaml.safe_dump({"clients": [entry]}))
    auth = JwtCdsAuth(load_cds_clients(tmp_path / "cds.yaml"))
    assert service.call(auth, EC_EHR.assertion(service.url())).text == EHR


def test_keys_from_the_jku_are_fetched_once_and_cached(service: Service, remote: Remote) -> None:
    url = remote.script("/ehr/jwks", {"keys": [public_jwk(EC_EHR)]})
    auth = JwtCdsAuth({EHR: client(jku=[url])})
    named = EC_EHR.assertion(service.url(), headers={"jku": url})
    assert service.call(auth, named).status_code == 200
    assert service.call(auth, EC_EHR.assertion(service.url())).status_code == 200  # no jku
    assert remote.hits("/ehr/jwks") == 1


def test_an_unknown_kid_does_not_refetch_within_30_seconds(
    service: Service, remote: Remote
) -> None:
    url = remote.script("/rotating/jwks", {"keys": [public_jwk(EC_EHR)]})
    auth = JwtCdsAuth({EHR: client(jku=[url])})
    assert service.call(auth, EC_EHR.assertion(service.url())).status_code == 200
    stranger = TestClient(EHR, [], ec_key())
    assert "signature does not match" in service.refusal(auth, stranger.assertion(service.url()))
    assert remote.hits("/rotating/jwks") == 1


def test_a_jwks_with_other_keys_too_is_used_for_its_es384_key(
    service: Service, remote: Remote
) -> None:
    p256 = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True)
    url = remote.script("/mixed/jwks", {"keys": [p256 | {"kid": "p256"}, public_jwk(EC_EHR)]})
    auth = JwtCdsAuth({EHR: client(jku=[url])})
    assert service.call(auth, EC_EHR.assertion(service.url())).status_code == 200


def test_feedback_takes_the_service_url_or_its_feedback_url(service: Service) -> None:
    auth = inline(EC_EHR)
    for aud in (service.url(), service.url(feedback=True)):
        assert service.call(auth, EC_EHR.assertion(aud), feedback=True).status_code == 200
    assert "aud must be" in service.refusal(auth, EC_EHR.assertion(service.url(feedback=True)))


def test_the_audience_is_under_the_public_base_url(service: Service) -> None:
    request = Request({"type": "http", "scheme": "http", "path": "/", "headers": []})
    assert service_audiences(request, "https://rems.example.test/", "x", feedback=False) == (
        "https://rems.example.test/cds-services/x",
    )


def test_development_lets_every_caller_in_and_fetches_only_from_loopback(
    service: Service,
) -> None:
    response = service.call(DevelopmentCdsAuth(), None)
    assert (response.status_code, response.text) == (200, "development")
    development = run(DevelopmentCdsAuth().client(Request({"type": "http"}), ()))
    assert development.may_fetch("http://127.0.0.1:8080/fhir")
    assert development.may_fetch("http://[::1]:8080/fhir/")
    assert not development.may_fetch("https://fhir.epic.example.org/api/FHIR/R4")


def test_without_a_clients_file_every_call_is_refused(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "rems_gateway.cds"):
        auth = cds_authenticator(Settings(auth="smart"))
    assert "every CDS hook and feedback call gets 401" in caplog.text
    assert "iss is not a CDS client" in service.refusal(auth, EC_EHR.assertion(service.url()))
    assert isinstance(cds_authenticator(Settings(auth="development")), DevelopmentCdsAuth)


# --- the CDS clients file --------------------------------------------------------------------


def test_the_example_clients_file_loads() -> None:
    (epic,) = load_cds_clients(EXAMPLE).values()
    assert epic.pharmacy_npi == "1679576722"
    assert [key.algorithm for key in epic.public_keys()] == ["ES384"]
    assert epic.may_fetch("https://fhir.epic.example.org/api/FHIR/R4/")
    assert not epic.may_fetch("https://fhir.epic.example.org/api/FHIR/STU3")


def entry(**changes: Any) -> dict[str, Any]:
    return {"iss": EHR, "keys": [public_jwk(EC_EHR)]} | changes


@pytest.mark.parametrize(
    ("clients", "problem"),
    [
        ([entry(secret="x")], "clients.0.secret: unknown key"),
        ([entry(keys=[ECAlgorithm.to_jwk(ec_key(), as_dict=True)])], "private key material"),
        ([entry(keys=[])], "keys, jwks, jwks_file or jku"),
        ([entry(jku=["http://ehr.example.test/jwks"])], "must use https"),
        ([entry(fhir_servers=["https://ehr.example.test/fhir?x=1"])], "no query or fragment"),
        ([entry(pharmacy_npi="1679576723")], "not a valid NPI"),
        ([entry(jwks_file="missing.json")], "missing.json: No such file"),
        ([entry(), entry()], f"iss {EHR!r} appears twice"),
    ],
    ids=["unknown-key", "private", "no-key", "http", "query", "npi", "jwks-file", "twice"],
)
def test_the_clients_file_is_read_strictly(
    tmp_path: Path, clients: list[dict[str, Any]], problem: str
) -> None:
    path = tmp_path / "cds.yaml"
    path.write_text(yaml.safe_dump({"clients": clients}), encoding="utf-8")
    with pytest.raises(CdsClientsError, match=re.escape(problem)) as raised:
        load_cds_clients(path)
    assert str(raised.value).startswith(f"cds clients file {path}: clients")
    assert "\n" not in str(raised.value)


def test_a_bad_clients_file_stops_the_settings(tmp_path: Path) -> None:
    path = tmp_path / "cds.yaml"
    path.write_text(yaml.safe_dump({"clients": [entry(secret="x")]}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cds_clients: cds clients file .*unknown key"):
        load_settings({"cds_clients": path})


# --- fetching prefetch data from the EHR's FHIR server ---------------------------------------


def fetched(remote: Remote, query: str, fhir_server: str | None = None) -> dict[str, Any]:
    server = fhir_server or remote.base + "/fhir"
    ehr_client = client(jku=["https://ehr.example.test/jwks"], fhir_servers=[remote.base + "/fhir"])

    async def go() -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            return await fetch(ehr_client, http, server, {"access_token": "ehr-token"}, query)

    return run(go())


def test_a_fetch_sends_the_ehrs_bearer_token(remote: Remote) -> None:
    remote.script("/fhir/Patient/abc", {"resourceType": "Patient", "id": "abc"})
    assert fetched(remote, "Patient/abc")["id"] == "abc"
    ((asked, headers),) = remote.asked
    assert asked == "/fhir/Patient/abc"
    assert headers["authorization"] == "Bearer ehr-token"
    assert headers["accept"] == "application/fhir+json"


def test_a_fetch_from_a_server_not_allow_listed_is_refused_without_contact(
    remote: Remote,
) -> None:
    with pytest.raises(FetchRefused, match="not allow-listed"):
        fetched(remote, "Patient/abc", fhir_server=remote.base + "/elsewhere")
    with pytest.raises(FetchRefused, match="relative"):
        fetched(remote, "../admin/Patient/abc")
    assert remote.asked == []


@pytest.mark.parametrize(
    ("body", "status", "problem"),
    [
        ({"resourceType": "OperationOutcome"}, 404, "the FHIR server answered 404 (fetching"),
        (b"<html>", 200, "the FHIR server sent no JSON (fetching Observation)"),
        ({"entry": []}, 200, "the FHIR server sent no FHIR resource (fetching Observation)"),
        (b" " * (4 * 1024 * 1024 + 1), 200, "the FHIR server sent more than 4 MB"),
    ],
    ids=["404", "not-json", "not-fhir", "oversized"],
)
def test_a_fetch_that_gives_nothing_usable_fails(
    remote: Remote, body: Any, status: int, problem: str
) -> None:
    remote.script("/fhir/Observation", body, status)
    with pytest.raises(FetchFailed, match=re.escape(problem)) as raised:
        fetched(remote, "Observation?patient=abc&code=http://loinc.org|751-8")
    assert "ehr-token" not in str(raised.value) and "abc" not in str(raised.value)
