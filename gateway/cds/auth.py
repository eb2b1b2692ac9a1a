"""Who is calling a CDS service: the EHR's JWT (CDS Hooks 2.0 "Trusting CDS Clients").

Every hook and feedback call carries `Authorization: Bearer <JWT>` signed by the EHR (RS384 or
ES384): `iss` one of the CDS clients file's issuers, `aud` the service URL, `exp` at most five
minutes ahead, `iat`, and a `jti` never seen before. The keys are the client's own (inline or
a JWKS file) and the JWKS at its allow-listed `jku` URLs; a JWT naming any other `jku` is refused
before anything is fetched, and one carrying its own key (`jwk`, `x5u`) is refused outright.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import jwt
from fastapi import Request
from pydantic import ValidationError

from gateway.cds.clients import CdsClient, DevelopmentCdsClient, load_cds_clients
from gateway.cds.fhir_fetch import FetchFailed, get_json
from gateway.fhir.smart import CLOCK_SKEW_SECONDS, ReplayCache, bearer_token
from gateway.fhir.smart_clients import PRIVATE_JWK_MEMBERS, ClientKey, Jwk, client_key
from gateway.fhir.token import ASSERTION_ALGORITHMS, MAX_ASSERTION_SECONDS

log = logging.getLogger("rems_gateway.cds")

JWKS_CACHE_SECONDS = 300
JWKS_REFETCH_SECONDS = 30  # an unknown kid fetches the JWKS again at most this often
MAX_JWKS_BYTES = 1024 * 1024
JWKS_ACCEPT = {"Accept": "application/jwk-set+json, application/json"}
KEY_HEADERS = ("jwk", "x5u")  # a JWT may not bring the key it is checked with


class CdsAuthError(Exception):
    """The call is refused (401); the text is safe to show: it holds nothing of the token."""


class CdsAuthenticator(Protocol):
    async def client(self, request: Request, audiences: Sequence[str]) -> CdsClient:
        """The CDS client making this call, or CdsAuthError."""
        ...


class AuthSettings(Protocol):
    """What cds_authenticator reads of gateway.config.Settings (which sits above gateway.cds)."""

    @property
    def auth(self) -> str: ...

    @property
    def cds_clients(self) -> Path | None: ...


def cds_authenticator(settings: AuthSettings) -> CdsAuthenticator:
    """`--auth development` lets every caller in; otherwise the CDS clients file's EHRs."""
    if settings.auth == "development":
        return DevelopmentCdsAuth()
    clients = load_cds_clients(settings.cds_clients) if settings.cds_clients else {}
    if not clients:
        log.warning("no CDS clients (cds_clients): every CDS hook and feedback call gets 401")
    return JwtCdsAuth(clients)


def service_audiences(
    request: Request, public_base_url: str | None, service_id: str, feedback: bool
) -> tuple[str, ...]:
    """The `aud` values a JWT for this call may carry: the service URL (feedback: or its
    /feedback URL), under the public base URL, else the URL the request came in on."""
    base = (public_base_url or f"{request.url.scheme}://{request.url.netloc}").rstrip("/")
    service = f"{base}/cds-services/{service_id}"
    return (service, f"{service}/feedback") if feedback else (service,)


class DevelopmentCdsAuth:
    """`--auth development` (loopback only): no JWT needed; one sent is not looked at."""

    def __init__(self) -> None:
        self._client = DevelopmentCdsClient.make()

    async def client(self, request: Request, audiences: Sequence[str]) -> CdsClient:
        return self._client


@dataclass(frozen=True)
class _FetchedJwks:
    keys: list[ClientKey]
    fetched_at: float

    def serves(self, kid: str | None) -> bool:
        """Still good for this kid: younger than five minutes, and either holding the kid or
        fetched less than 30 s ago (an unknown kid cannot make the gateway hammer the EHR)."""
        age = time.monotonic() - self.fetched_at
        if age >= JWKS_CACHE_SECONDS:
            return False
        known = kid is None or any(key.kid in (None, kid) for key in self.keys)
        return known or age < JWKS_REFETCH_SECONDS


class JwtCdsAuth:
    """Checks the EHR's JWT against the CDS clients file and the JWKS it allows."""

    def __init__(
        self, clients: dict[str, CdsClient], http: httpx.AsyncClient | None = None
    ) -> None:
        self.clients = clients
        self.http = http or httpx.AsyncClient(follow_redirects=False)
        self.replays = ReplayCache()
        self._jwks: dict[str, _FetchedJwks] = {}
        self._fetching: dict[str, asyncio.Lock] = {}

    async def client(self, request: Request, audiences: Sequence[str]) -> CdsClient:
        token = bearer_token(request)
        if token is None:
            raise CdsAuthError("send the CDS client's JWT (Authorization: Bearer …)")
        header, unverified = _unverified(token)
        client = self._issuer(unverified)
        jku = _allowed_jku(client, header)
        claims = _verified(token, _fitting(client.public_keys(), header), client, audiences)
        if claims is None:
            urls = [jku] if jku else client.jku
            remote = [key for url in urls for key in await self._remote_keys(url, header)]
            claims = _verified(token, _fitting(remote, header), client, audiences)
        if claims is None:
            raise CdsAuthError("the JWT's signature does not match the CDS client's keys")
        _check_times_and_jti(claims)
        if not self.replays.first_use(client.iss, claims["jti"], claims["exp"]):
            raise CdsAuthError("this JWT (its jti) was already used")
        return client

    def _issuer(self, unverified: dict[str, Any]) -> CdsClient:
        iss = unverified.get("iss")
        client = self.clients.get(iss) if isinstance(iss, str) else None
        if client is None:
            raise CdsAuthError("the JWT's iss is not a CDS client of this gateway")
        return client

    async def _remote_keys(self, url: str, header: dict[str, Any]) -> list[ClientKey]:
        """The JWKS at an allow-listed URL, from the cache while it serves the JWT's kid."""
        async with self._fetching.setdefault(url, asyncio.Lock()):
            cached = self._jwks.get(url)
            if cached is not None and cached.serves(header.get("kid")):
                return cached.keys
            keys = await self._fetch_jwks(url)
            self._jwks[url] = _FetchedJwks(keys, time.monotonic())
            return keys

    async def _fetch_jwks(self, url: str) -> list[ClientKey]:
        try:
            document = await get_json(self.http, url, JWKS_ACCEPT, MAX_JWKS_BYTES)
        except FetchFailed as exc:
            raise CdsAuthError(f"the JWKS at {url} {exc}") from None
        members = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
            raise CdsAuthError(f"the document at {url} is not a JWKS")
        if any(PRIVATE_JWK_MEMBERS & set(member) for member in members):
            raise CdsAuthError(f"the JWKS at {url} holds private key material")
        keys = [key for key in map(_usable_key, members) if key is not None]
        if not keys:
            raise CdsAuthError(f"the JWKS at {url} has no RS384 or ES384 public key")
        return keys


def _usable_key(member: dict[str, Any]) -> ClientKey | None:
    """A fetched JWK the gateway can check with; an EHR's JWKS may list others (RS256, P-256)."""
    try:
        return client_key(Jwk.model_validate(member))
    except (ValidationError, ValueError):
        return None


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header (its alg and key members checked) and the claims, before any signature."""
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise CdsAuthError("the bearer token is not a JWT") from None
    if header.get("alg") not in ASSERTION_ALGORITHMS:
        raise CdsAuthError("the JWT must be signed with RS384 or ES384")
    if any(name in header for name in KEY_HEADERS):
        raise CdsAuthError("the JWT may not carry its own key (jwk, x5u): keys come from jku")
    return header, claims


def _allowed_jku(client: CdsClient, header: dict[str, Any]) -> str | None:
    jku = header.get("jku")
    if jku is not None and jku not in client.jku:
        raise CdsAuthError("the JWT's jku is not one of the CDS client's allowed JWKS URLs")
    return jku


def _fitting(keys: list[ClientKey], header: dict[str, Any]) -> list[ClientKey]:
    """The keys of the JWT's alg, and of its kid when it names one."""
    kid = header.get("kid")
    return [
        k for k in keys if k.algorithm == header["alg"] and (kid is None or k.kid in (None, kid))
    ]


def _verified(
    token: str, keys: list[ClientKey], client: CdsClient, audiences: Sequence[str]
) -> dict[str, Any] | None:
    """The claims once signature, iss, aud and exp are checked; None when no key signed it."""
    for key in keys:
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=list(audiences),
                issuer=client.iss,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.InvalidSignatureError:
            continue
        except jwt.PyJWTError as exc:
            raise CdsAuthError(_refusal(exc, audiences)) from None
    return None


def _refusal(error: jwt.PyJWTError, audiences: Sequence[str]) -> str:
    """What is wrong with a well-signed JWT's claims, in words that quote none of them."""
    match error:
        case jwt.ExpiredSignatureError():
            return "the JWT expired"
        case jwt.ImmatureSignatureError():
            return "the JWT's iat is in the future"
        case jwt.InvalidAudienceError():
            return f"the JWT's aud must be {' or '.join(audiences)}"
        case jwt.MissingRequiredClaimError(claim=claim):
            return f"the JWT needs a {claim} claim"
    return "the JWT's claims are not valid (iss, aud, exp, iat)"


def _check_times_and_jti(claims: dict[str, Any]) -> None:
    now = time.time()
    if claims["exp"] > now + MAX_ASSERTION_SECONDS + CLOCK_SKEW_SECONDS:
        raise CdsAuthError("the JWT's exp is more than five minutes ahead")
    if claims["iat"] > now + CLOCK_SKEW_SECONDS:
        raise CdsAuthError("the JWT's iat is in the future")
    if not isinstance(claims["jti"], str) or not claims["jti"]:
        raise CdsAuthError("the JWT needs a jti")
