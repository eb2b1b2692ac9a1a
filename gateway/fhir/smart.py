"""SMART Backend Services: the gateway's access tokens and the authenticator that checks them.

Access tokens are JWTs (RFC 9068 `at+jwt`) signed by the gateway with `--smart-signing-key`
(EC P-384 → ES384, RSA → RS384). Without that setting a key is generated at start-up: its tokens
die with the process and are not accepted by other gateway processes (a warning says so).
Token issuance (the assertion checks) lives in gateway/fhir/token.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from fastapi import Request
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.utils import base64url_encode

from gateway.fhir.auth import Principal
from gateway.fhir.http import FhirError
from gateway.fhir.smart_clients import SmartClient, load_clients

log = logging.getLogger("rems_gateway.smart")

TOKEN_PATH = "/auth/token"
ACCESS_TOKEN_SECONDS = 300
ACCESS_TOKEN_TYPE = "at+jwt"
REALM = "rems-gateway FHIR"
LOCAL_ISSUER = "urn:rems-gateway"
CLOCK_SKEW_SECONDS = 30


class InvalidAccessToken(Exception):
    """A bearer token that is not one of ours, or no longer valid; the text is safe to show."""


@dataclass(frozen=True)
class SigningKey:
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    algorithm: str
    kid: str

    @classmethod
    def from_file(cls, path: Path) -> SigningKey:
        try:
            key = load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"smart_signing_key {path}: not a readable PEM private key") from exc
        if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
            return cls(key, "RS384", _kid(key))
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
            return cls(key, "ES384", _kid(key))
        raise ValueError(f"smart_signing_key {path}: use an EC P-384 or RSA (≥ 2048 bits) key")

    @classmethod
    def generated(cls) -> SigningKey:
        key = ec.generate_private_key(ec.SECP384R1())
        return cls(key, "ES384", _kid(key))


def _kid(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    """The RFC 7638 JWK thumbprint of the public key."""
    loader = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    jwk = loader.to_jwk(key.public_key(), as_dict=True)
    members = ("e", "kty", "n") if jwk["kty"] == "RSA" else ("crv", "kty", "x", "y")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return base64url_encode(hashlib.sha256(canonical.encode()).digest()).decode()


class ReplayCache:
    """Assertion ids (per client) seen in this process, kept until the assertion expires.

    Per process: with several gateway processes, one assertion could be exchanged once at each
    within its (at most five-minute) lifetime; every token so obtained is still the same
    client's, with the same scopes.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def first_use(self, client_id: str, jti: str, expires_at: float) -> bool:
        now = time.time()
        with self._lock:
            self._seen = {k: t for k, t in self._seen.items() if t >= now}
            if (client_id, jti) in self._seen:
                return False
            self._seen[(client_id, jti)] = expires_at + CLOCK_SKEW_SECONDS
            return True


@dataclass(frozen=True)
class AccessToken:
    token: str
    scopes: list[str]
    expires_in: int


class SmartBackendAuth:
    """Verifies the gateway's own access tokens; knows the clients and the signing key."""

    def __init__(
        self,
        clients: dict[str, SmartClient],
        signing_key: SigningKey,
        public_base_url: str | None = None,
    ) -> None:
        self.clients = clients
        self.signing_key = signing_key
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.issuer = self.public_base_url or LOCAL_ISSUER
        self.replays = ReplayCache()

    @classmethod
    def from_files(
        cls, clients_file: Path | None, signing_key: Path | None, public_base_url: str | None
    ) -> SmartBackendAuth:
        """The clients file, the PEM key signing access tokens (else one made now) and the URL
        clients reach the gateway at (``serve``'s --smart-clients, --smart-signing-key and
        --public-base-url)."""
        clients = load_clients(clients_file) if clients_file else {}
        if not clients:
            log.warning("no SMART clients (--smart-clients): every FHIR request gets 401")
        if signing_key:
            key = SigningKey.from_file(signing_key)
        else:
            key = SigningKey.generated()
            log.warning(
                "no --smart-signing-key: access tokens are signed with a key generated now; "
                "they do not survive a restart and other gateway processes refuse them"
            )
        base = public_base_url
        if base is None and clients:
            log.warning(
                "no --public-base-url: client assertions must name this request's own "
                "token URL as aud (set it behind a proxy or load balancer)"
            )
        return cls(clients, key, base)

    def token_endpoint(self, request: Request) -> str:
        """The token URL: under the configured public base URL, else this request's base."""
        base = self.public_base_url or str(request.base_url).rstrip("/")
        return base + TOKEN_PATH

    def issue(self, client: SmartClient, scopes: list[str]) -> AccessToken:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.issuer,
            "sub": client.client_id,
            "client_id": client.client_id,
            "scope": " ".join(scopes),
            "iat": now,
            "exp": now + ACCESS_TOKEN_SECONDS,
            "jti": secrets.token_urlsafe(16),
        }
        if client.fhir_user:
            claims["fhirUser"] = client.fhir_user
        headers = {"typ": ACCESS_TOKEN_TYPE, "kid": self.signing_key.kid}
        token = jwt.encode(
            claims, self.signing_key.private_key, self.signing_key.algorithm, headers=headers
        )
        return AccessToken(token, scopes, ACCESS_TOKEN_SECONDS)

    def verify(self, token: str) -> Principal:
        """The principal a valid access token names, or InvalidAccessToken."""
        try:
            header = jwt.get_unverified_header(token)
            if header.get("typ") != ACCESS_TOKEN_TYPE:
                raise InvalidAccessToken("not an access token of this gateway")
            claims = jwt.decode(
                token,
                self.signing_key.private_key.public_key(),
                algorithms=[self.signing_key.algorithm],
                audience=self.issuer,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "scope"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidAccessToken("the access token expired") from None
        except jwt.PyJWTError:
            raise InvalidAccessToken("the access token is not valid") from None
        client = self.clients.get(claims["sub"])
        if client is None:  # a client removed from the file since (after a restart)
            raise InvalidAccessToken("the access token's client is not known")
        return Principal(client.client_id, frozenset(claims["scope"].split()), client.fhir_user)

    async def principal(self, request: Request) -> Principal:
        token = bearer_token(request)
        if token is None:
            raise FhirError(
                401,
                "login",
                "send a SMART Backend Services bearer token (Authorization: Bearer …)",
                headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'},
            )
        try:
            return self.verify(token)
        except InvalidAccessToken as exc:
            raise FhirError(401, "login", str(exc), headers=invalid_token_challenge(exc)) from None


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def invalid_token_challenge(error: InvalidAccessToken) -> dict[str, str]:
    """RFC 6750 §3: the challenge naming the error."""
    return {
        "WWW-Authenticate": (
            f'Bearer realm="{REALM}", error="invalid_token", error_description="{error}"'
        )
    }
