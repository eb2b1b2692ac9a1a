"""SMART Backend Services over real HTTP: the token endpoint (RFC 6749 client_credentials with an
RFC 7523 assertion), access tokens on FHIR routes, discovery, and admin scope."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from jwt.algorithms import ECAlgorithm
from sqlalchemy import Engine

from gateway.app.service import RemsService
from gateway.app.values import Source
from gateway.config import ConfigError, load_settings
from gateway.fhir.scopes import granted_scopes
from gateway.fhir.smart_clients import SmartClientsError, load_clients
from tests.conftest import run, sqlite_only
from tests.http_server import running_app
from tests.smart_tokens import (
    PUBLIC_BASE_URL,
    TOKEN_URL,
    TestClient,
    access_token,
    bearer,
    ec_key,
    rsa_key,
    smart_settings,
    token_response,
)
from tests.test_fhir_observation import ANC, AT, FHIR
from tests.test_service import registry

# Who may call, with which token and scopes: the tokens' replay memory is the process's, and the
# storage of what an authorized call writes is test_fhir_observation's (conftest: sqlite_only).
pytestmark = sqlite_only

LAB_RSA = TestClient.rsa("lab-rsa", ["system/Observation.cru"])
LAB_EC = TestClient.ec("lab-ec", ["system/Observation.cruds"])
READER = TestClient.rsa("reader", ["system/Observation.rs"])
ADMIN = TestClient.ec("operator", ["admin"])
PRESCRIBER = TestClient.ec(
    "dr-lee-ehr", ["user/Observation.rs"], fhir_user="Practitioner/1234567893"
)
CLIENTS = [LAB_RSA, LAB_EC, READER, ADMIN, PRESCRIBER]
LOCAL_TOKEN_URL = "<the test server's own token URL>"


@dataclass
class Gateway:
    base: str
    signing_key: ec.EllipticCurvePrivateKey

    def fhir(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = bearer(token) if token else {}
        return httpx.request(method, self.base + "/fhir" + path, headers=headers, **kw)

    def create_observation(self, token: str | None) -> httpx.Response:
        headers = {"Content-Type": FHIR, **AT, **(bearer(token) if token else {})}
        return httpx.post(self.base + "/fhir/Observation", json=ANC, headers=headers)


@pytest.fixture
def gateway(service: RemsService, engine: Engine, tmp_path: Path) -> Iterator[Gateway]:
    run(service.load_registry(registry(), Source("test")))
    key = ec_key()
    key_file = tmp_path / "signing-key.pem"
    key_file.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    settings = smart_settings(tmp_path, CLIENTS) | {"smart_signing_key": key_file}
    with running_app(service, engine, **settings) as base:
        yield Gateway(base, key)


def oauth_error(response: httpx.Response) -> tuple[int, str]:
    assert response.headers["content-type"].startswith("application/json")
    return response.status_code, response.json()["error"]


def is_unauthorized_outcome(response: httpx.Response) -> bool:
    return (
        response.status_code == 401
        and response.json()["resourceType"] == "OperationOutcome"
        and response.headers["www-authenticate"].startswith("Bearer ")
    )


# --- the token endpoint ----------------------------------------------------------------------


@pytest.mark.parametrize("client", [LAB_RSA, LAB_EC], ids=["RS384", "ES384"])
def test_a_signed_assertion_gets_a_token_that_creates_an_observation(
    gateway: Gateway, client: TestClient
) -> None:
    response = token_response(gateway.base, client, "system/Observation.c")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    issued = response.json()
    assert issued["token_type"] == "bearer"
    assert 0 < issued["expires_in"] <= 300
    assert issued["scope"] == "system/Observation.c"
    assert gateway.create_observation(issued["access_token"]).status_code == 201


def test_a_replayed_assertion_is_refused(gateway: Gateway) -> None:
    assertion = LAB_RSA.assertion()
    first = token_response(
        gateway.base, LAB_RSA, "system/Observation.c", client_assertion=assertion
    )
    again = token_response(
        gateway.base, LAB_RSA, "system/Observation.c", client_assertion=assertion
    )
    assert first.status_code == 200
    assert oauth_error(again) == (401, "invalid_client")
    assert "jti" in again.json()["error_description"]


def test_an_assertion_signed_with_another_key_is_refused(gateway: Gateway) -> None:
    forged = LAB_RSA.assertion(key=rsa_key("someone else"))
    response = token_response(
        gateway.base, LAB_RSA, "system/Observation.c", client_assertion=forged
    )
    assert oauth_error(response) == (401, "invalid_client")


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": LOCAL_TOKEN_URL},  # this server's own address, not its public base URL
        {"aud": "https://other.example/auth/token"},
        {"exp": int(time.time()) - 120},
        {"exp": int(time.time()) + 3600},
        {"jti": None},
        {"exp": None},
        {"sub": "someone-else"},
    ],
    ids=["aud-local-url", "aud-other", "expired", "exp-too-far", "no-jti", "no-exp", "sub"],
)
def test_an_assertion_with_bad_claims_is_refused(gateway: Gateway, claims: dict[str, Any]) -> None:
    if claims.get("aud") == LOCAL_TOKEN_URL:
        claims = {"aud": gateway.base + "/auth/token"}
    assertion = LAB_EC.assertion(**claims)
    response = token_response(
        gateway.base, LAB_EC, "system/Observation.c", client_assertion=assertion
    )
    assert oauth_error(response) == (401, "invalid_client")


@pytest.mark.parametrize("algorithm", ["HS256", "none"])
def test_symmetric_and_unsigned_assertions_are_refused(gateway: Gateway, algorithm: str) -> None:
    claims = {
        "iss": LAB_RSA.client_id,
        "sub": LAB_RSA.client_id,
        "aud": TOKEN_URL,
        "exp": int(time.time()) + 60,
        "jti": f"alg-{algorithm}",
    }
    secret = "a-shared-secret-of-32-characters" if algorithm == "HS256" else None
    assertion = jwt.encode(claims, secret, algorithm=algorithm, headers={"kid": LAB_RSA.kid})
    response = token_response(
        gateway.base, LAB_RSA, "system/Observation.c", client_assertion=assertion
    )
    assert oauth_error(response) == (401, "invalid_client")


def test_a_client_gets_only_the_scopes_it_is_allowed(gateway: Gateway) -> None:
    response = token_response(
        gateway.base, LAB_RSA, "system/Observation.cruds system/Patient.r admin"
    )
    assert response.status_code == 200
    assert response.json()["scope"] == "system/Observation.cru"
    nothing = token_response(gateway.base, LAB_RSA, "system/Patient.r admin")
    assert oauth_error(nothing) == (400, "invalid_scope")


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ({"grant_type": "authorization_code"}, (400, "unsupported_grant_type")),
        ({"client_assertion_type": "urn:other"}, (400, "invalid_request")),
        ({"client_assertion": "not-a-jwt"}, (401, "invalid_client")),
        ({"scope": ""}, (400, "invalid_scope")),
    ],
)
def test_malformed_token_requests_get_rfc_6749_errors(
    gateway: Gateway, form: dict[str, str], expected: tuple[int, str]
) -> None:
    form = dict(form)  # the parameters are shared by the runs on each database
    scope = form.pop("scope", "system/Observation.c")
    assert oauth_error(token_response(gateway.base, LAB_RSA, scope, **form)) == expected


def test_an_unknown_client_is_refused(gateway: Gateway) -> None:
    stranger = TestClient.ec("stranger", ["system/Observation.c"])
    response = token_response(gateway.base, stranger, "system/Observation.c")
    assert oauth_error(response) == (401, "invalid_client")


def test_a_prescriber_clients_token_carries_fhir_user(gateway: Gateway) -> None:
    token = access_token(gateway.base, PRESCRIBER, "user/Observation.rs")
    assert jwt.decode(token, options={"verify_signature": False})["fhirUser"] == (
        "Practitioner/1234567893"
    )
    assert gateway.fhir("GET", "/Observation", token).status_code == 200


# --- access tokens on FHIR routes ------------------------------------------------------------


def test_metadata_and_discovery_are_public(gateway: Gateway) -> None:
    statement = gateway.fhir("GET", "/metadata").json()
    assert statement["rest"][0]["security"]["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        config = httpx.get(gateway.base + path).json()
        assert config["token_endpoint"] == TOKEN_URL
        assert config["grant_types_supported"] == ["client_credentials"]
        assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
        assert config["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
        assert "system/Observation.cru" in config["scopes_supported"]


def test_a_request_without_a_token_is_401(gateway: Gateway) -> None:
    response = gateway.create_observation(None)
    assert is_unauthorized_outcome(response)


def access_token_claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": PUBLIC_BASE_URL,
        "aud": PUBLIC_BASE_URL,
        "sub": LAB_EC.client_id,
        "scope": "system/Observation.c",
        "iat": now - 600,
        "exp": now + 300,
    }
    return claims | changes


@pytest.mark.parametrize("kind", ["garbage", "expired", "other-key", "hs256"])
def test_an_invalid_access_token_is_401(gateway: Gateway, kind: str) -> None:
    at_jwt = {"typ": "at+jwt"}
    tokens = {
        "garbage": lambda: "not.a.token",
        "expired": lambda: jwt.encode(
            access_token_claims(exp=int(time.time()) - 60), gateway.signing_key, "ES384", at_jwt
        ),
        "other-key": lambda: jwt.encode(access_token_claims(), ec_key(), "ES384", at_jwt),
        "hs256": lambda: jwt.encode(access_token_claims(), "k" * 32, "HS256", at_jwt),
    }
    response = gateway.create_observation(tokens[kind]())
    assert is_unauthorized_outcome(response)
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    if kind == "expired":
        assert "expired" in response.json()["issue"][0]["diagnostics"]


def test_a_token_signed_with_the_gateways_key_is_accepted(gateway: Gateway) -> None:
    """The counterpart of the expired case above: only the expiry made it fail."""
    token = jwt.encode(access_token_claims(), gateway.signing_key, "ES384", {"typ": "at+jwt"})
    assert gateway.create_observation(token).status_code == 201


def test_a_scope_not_granted_is_403(gateway: Gateway) -> None:
    token = access_token(gateway.base, READER, "system/Observation.rs")
    response = gateway.create_observation(token)
    assert response.status_code == 403
    assert response.json()["issue"][0]["code"] == "forbidden"
    assert gateway.fhir("GET", "/Observation", token).status_code == 200


# --- admin scope -----------------------------------------------------------------------------


def post_registry(gateway: Gateway, token: str | None) -> httpx.Response:
    headers = bearer(token) if token else {}
    body = {"prescribers": [{"npi": "1234567893", "name": "Ann Lee", "certified": True}]}
    return httpx.post(gateway.base + "/admin/registry", json=body, headers=headers)


def test_an_admin_scope_token_loads_the_registry(gateway: Gateway) -> None:
    token = access_token(gateway.base, ADMIN, "admin")
    assert post_registry(gateway, token).status_code == 200


def test_admin_needs_the_admin_scope(gateway: Gateway) -> None:
    token = access_token(gateway.base, LAB_RSA, "system/Observation.c")
    forbidden = post_registry(gateway, token)
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "forbidden"
    assert post_registry(gateway, None).status_code == 401


# --- the clients file and scopes (no server) -------------------------------------------------

EXAMPLE = Path(__file__).parent.parent / "fixtures" / "smart" / "clients.example.yaml"


def test_the_example_clients_file_loads() -> None:
    clients = load_clients(EXAMPLE)
    assert clients["dr-lee-ehr-session"].fhir_user == "Practitioner/1234567893"
    assert [k.algorithm for c in clients.values() for k in c.public_keys()] == [
        "RS384",
        "ES384",
        "ES384",
    ]


def client_entry(**changes: Any) -> dict[str, Any]:
    return LAB_EC.entry() | changes


def private_jwk() -> dict[str, Any]:
    return ECAlgorithm.to_jwk(ec_key(), as_dict=True)


def weak_rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def p256_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (lambda: client_entry(secret="x"), "clients.0.secret: unknown key"),
        (lambda: client_entry(scopes=["system/Observation.xyz"]), "not a SMART scope"),
        (lambda: client_entry(keys=[private_jwk()]), "private key material"),
        (lambda: client_entry(keys=[{"pem": weak_rsa_pem()}]), "at least 2048 bits"),
        (lambda: client_entry(keys=[{"pem": p256_pem()}]), "P-384"),
        (lambda: client_entry(keys=[]), "public key(s)"),
        (lambda: client_entry(fhir_user="Dr Lee"), "relative reference"),
    ],
    ids=["unknown-key", "scope", "private-jwk", "weak-rsa", "p256", "no-key", "fhir-user"],
)
def test_the_clients_file_is_read_strictly(tmp_path: Path, entry: Any, problem: str) -> None:
    path = tmp_path / "clients.yaml"
    path.write_text(yaml.safe_dump({"clients": [entry()]}), encoding="utf-8")
    with pytest.raises(SmartClientsError, match=re.escape(problem)):
        load_clients(path)


def test_a_bad_clients_file_stops_the_settings(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    path.write_text(yaml.safe_dump({"clients": [client_entry(secret="x")]}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"smart_clients: smart clients file .*unknown key"):
        load_settings({"smart_clients": path})


@pytest.mark.parametrize(
    ("requested", "allowed", "granted"),
    [
        (["system/Observation.c"], ["system/Observation.cruds"], ["system/Observation.c"]),
        (["system/Observation.write"], ["system/*.*"], ["system/Observation.write"]),
        (["system/*.cruds"], ["system/Observation.rs"], ["system/Observation.rs"]),
        (["system/Observation.cs"], ["system/Observation.read"], ["system/Observation.s"]),
        (["user/Observation.r"], ["system/Observation.r"], []),
        (["admin", "openid"], ["admin"], ["admin"]),
    ],
)
def test_granted_scopes_are_requested_intersected_with_allowed(
    requested: list[str], allowed: list[str], granted: list[str]
) -> None:
    assert granted_scopes(requested, allowed) == granted
