"""`rems-gateway token`: an access token from a gateway's SMART token endpoint, for scripts.

SMART Backend Services as the gateway checks it (gateway/fhir/token.py): the client signs an
RFC 7523 assertion with its private key — EC P-384 → ES384, RSA ≥ 2048 bits → RS384 — with `iss`
= `sub` = its client_id, `aud` = the token endpoint, `exp` four minutes ahead and a fresh `jti`.
The token endpoint is read from `<gateway>/.well-known/smart-configuration`, so a gateway behind
a proxy (`--public-base-url`) is asked at the URL it announces.

It imports nothing of the gateway: it is a client, like any other.
"""

from __future__ import annotations

import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_SECONDS = 240  # the gateway takes at most 300
DISCOVERY_PATH = "/.well-known/smart-configuration"
MIN_RSA_BITS = 2048


class TokenError(Exception):
    """No token, in one line; ``usage`` when the options are at fault (exit 2, else 1)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class ClientKey:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    algorithm: str  # ES384 or RS384


def read_key(path: Path) -> ClientKey:
    """The client's private key (PEM, unencrypted), as the gateway takes it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TokenError(f"--key {path}: {exc.strerror}", usage=True) from None
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise TokenError(
            f"--key {path}: not an unencrypted PEM private key (the client's own key, whose "
            "public half is in the gateway's --smart-clients file)",
            usage=True,
        ) from None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return ClientKey(key, "ES384")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= MIN_RSA_BITS:
        return ClientKey(key, "RS384")
    raise TokenError(
        f"--key {path}: the gateway takes EC P-384 (ES384) or RSA of 2048 bits or more (RS384)",
        usage=True,
    )


def gateway_base(url: str) -> str:
    """The gateway's base URL: http(s), no query; a trailing `/` or `/fhir` is dropped."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise TokenError(
            f"--gateway {url!r} is not the gateway's URL, e.g. http://127.0.0.1:8080 or "
            "https://rems.example.org",
            usage=True,
        )
    return url.rstrip("/").removesuffix("/fhir").rstrip("/")


def trusted(ca: Path | None) -> ssl.SSLContext | bool:
    """The TLS trust for an https gateway: the system's, or this CA (PEM)."""
    if ca is None:
        return True
    try:
        return ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise TokenError(f"--tls-ca {ca}: cannot use it ({reason})", usage=True) from None


def assertion(client_id: str, key: ClientKey, token_url: str, kid: str | None = None) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": now,
        "exp": now + ASSERTION_SECONDS,
        "jti": secrets.token_urlsafe(16),
    }
    return jwt.encode(claims, key.key, key.algorithm, headers={"kid": kid} if kid else None)


def access_token(
    base: str,
    client_id: str,
    key: ClientKey,
    scopes: list[str],
    *,
    kid: str | None = None,
    verify: ssl.SSLContext | bool = True,
    timeout: float = 30,
) -> str:
    """Discover the token endpoint, exchange a fresh assertion, return the access token.
    Without ``scopes`` every scope the gateway announces is asked for (it grants those the
    client is allowed)."""
    with httpx.Client(verify=verify, timeout=timeout) as http:
        configuration = _discover(http, base)
        token_url = configuration.get("token_endpoint")
        if not isinstance(token_url, str) or not token_url:
            raise TokenError(f"{base}{DISCOVERY_PATH} names no token_endpoint")
        asked = scopes or [str(s) for s in configuration.get("scopes_supported") or []]
        if not asked:
            raise TokenError("the gateway announces no scopes: give --scope")
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion(client_id, key, token_url, kid),
            "scope": " ".join(asked),
        }
        response = _call(http, "POST", token_url, data=form)
    if response.status_code != 200:
        raise TokenError(f"the gateway refused a token for {client_id}: {_oauth_error(response)}")
    token = _json(response, token_url).get("access_token")
    if not isinstance(token, str) or not token:
        raise TokenError(f"{token_url} answered no access_token")
    return token


def _discover(http: httpx.Client, base: str) -> dict[str, object]:
    url = base + DISCOVERY_PATH
    response = _call(http, "GET", url)
    if response.status_code == 404:
        raise TokenError(
            f"{url}: 404: the gateway issues no tokens (it runs --auth development?) or "
            "--gateway is not its URL"
        )
    if response.status_code != 200:
        raise TokenError(f"{url}: HTTP {response.status_code}")
    return _json(response, url)


def _call(
    http: httpx.Client, method: str, url: str, data: dict[str, str] | None = None
) -> httpx.Response:
    try:
        return http.request(method, url, data=data)
    except httpx.ConnectError as exc:
        raise TokenError(
            f"cannot reach {url} ({_reason(exc)}): is the gateway running there? (--gateway)"
        ) from None
    except httpx.TimeoutException:
        raise TokenError(f"{url} did not answer in time") from None
    except httpx.HTTPError as exc:
        raise TokenError(f"{url}: {type(exc).__name__}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _json(response: httpx.Response, url: str) -> dict[str, object]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise TokenError(f"{url} did not answer JSON: is --gateway a rems-gateway?")
    return body


def _oauth_error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if not isinstance(body, dict):
        return f"HTTP {response.status_code}"
    error = str(body.get("error", "")) or f"HTTP {response.status_code}"
    described = str(body.get("error_description", ""))
    return f"{error}: {described}" if described else error
