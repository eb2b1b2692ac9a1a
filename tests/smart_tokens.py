"""SMART Backend Services for tests: clients with fresh keys, a clients file, signed assertions,
and access tokens from a running gateway's `POST /auth/token`.

    client = TestClient.rsa("lab", ["system/Observation.cru"])
    with running_app(service, engine, **smart_settings(tmp_path, [client])) as base:
        token = access_token(base, client, "system/Observation.c")
        httpx.post(base + "/fhir/Observation", headers={"Authorization": f"Bearer {token}"}, …)

A prescriber signing in is a client with `fhir_user="Practitioner/<NPI>"`.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PUBLIC_BASE_URL = "https://rems.example.test"
TOKEN_URL = PUBLIC_BASE_URL + "/auth/token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@cache
def rsa_key(name: str = "default") -> rsa.RSAPrivateKey:
    """One RSA key per name and test session (generating them takes time)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@dataclass
class TestClient:
    """A SMART client as a test knows it: its private key stays here, its public key goes to
    the clients file."""

    __test__ = False  # not a pytest test class

    client_id: str
    scopes: list[str]
    key: PrivateKey
    fhir_user: str | None = None
    kid: str = field(default_factory=lambda: secrets.token_hex(4))

    @classmethod
    def rsa(cls, client_id: str, scopes: list[str], **more: Any) -> TestClient:
        return cls(client_id, scopes, rsa_key(client_id), **more)

    @classmethod
    def ec(cls, client_id: str, scopes: list[str], **more: Any) -> TestClient:
        return cls(client_id, scopes, ec_key(), **more)

    @property
    def algorithm(self) -> str:
        return "RS384" if isinstance(self.key, rsa.RSAPrivateKey) else "ES384"

    def entry(self) -> dict[str, Any]:
        pem = self.key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        entry: dict[str, Any] = {
            "client_id": self.client_id,
            "scopes": self.scopes,
            "keys": [{"kid": self.kid, "pem": pem.decode()}],
        }
        if self.fhir_user:
            entry["fhir_user"] = self.fhir_user
        return entry

    def assertion(
        self,
        aud: str = TOKEN_URL,
        key: Any = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A signed client assertion; `claims` override or (with None) drop the defaults, and
        `headers` join the kid in the JOSE header."""
        now = int(time.time())
        body = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": aud,
            "exp": now + 240,
            "iat": now,
            "jti": secrets.token_urlsafe(12),
        } | claims
        body = {name: value for name, value in body.items() if value is not None}
        header = {"kid": self.kid} | (headers or {})
        return jwt.encode(body, key or self.key, self.algorithm, headers=header)


def write_clients_file(path: Path, clients: list[TestClient]) -> Path:
    path.write_text(yaml.safe_dump({"clients": [c.entry() for c in clients]}), encoding="utf-8")
    return path


def smart_settings(tmp_path: Path, clients: list[TestClient]) -> dict[str, Any]:
    """The keyword arguments of `running_app` for a gateway that knows these clients."""
    return {
        "auth": "smart",
        "smart_clients": write_clients_file(tmp_path / "smart-clients.yaml", clients),
        "public_base_url": PUBLIC_BASE_URL,
    }


def token_response(base_url: str, client: TestClient, scope: str, **form: str) -> httpx.Response:
    """`POST /auth/token` with a fresh assertion (or `client_assertion=` given)."""
    data = {
        "grant_type": "client_credentials",
        "client_assertion_type": JWT_BEARER,
        "client_assertion": client.assertion(),
        "scope": scope,
    } | form
    return httpx.post(base_url + "/auth/token", data=data)


def access_token(base_url: str, client: TestClient, scope: str) -> str:
    response = token_response(base_url, client, scope)
    response.raise_for_status()
    return response.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
