"""The console's sign-in: who may sign in (the admin token, or a SMART access token granted the
`admin` scope), and the session cookie that carries the operator from page to page.

The cookie is ``<payload>.<signature>``: the payload (base64url JSON: the operator, when the
session ends, its CSRF token and a random id) signed with HMAC-SHA256 under a key made when the
process starts, so sessions end with the process and one gateway's cookie means nothing to
another. Signing out revokes the session's id in this process until the session would have ended.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass

from gateway.fhir.auth import ADMIN_SCOPE, Authenticator
from gateway.fhir.smart import InvalidAccessToken, SmartBackendAuth

COOKIE = "rems_console"
TOKEN_ACTOR = "admin-token"  # as /admin names the bearer of the admin token


@dataclass(frozen=True)
class Session:
    operator: str  # "admin-token" or "smart:<client id>"
    expires: int  # Unix time
    csrf: str
    sid: str


class Sessions:
    def __init__(self, lifetime_seconds: int, key: bytes | None = None) -> None:
        self.lifetime = lifetime_seconds
        self._key = key or secrets.token_bytes(32)
        self._revoked: dict[str, int] = {}  # session id → when it would have ended
        self._lock = threading.Lock()

    def open(self, operator: str, now: float | None = None) -> tuple[Session, str]:
        """A new session for the operator, and its cookie value."""
        issued = int(now if now is not None else time.time())
        session = Session(
            operator, issued + self.lifetime, secrets.token_urlsafe(24), secrets.token_urlsafe(12)
        )
        payload = json.dumps(
            {"op": operator, "exp": session.expires, "csrf": session.csrf, "sid": session.sid},
            separators=(",", ":"),
        ).encode()
        text = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return session, f"{text}.{self._sign(text)}"

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie carries, or None: no cookie, a bad signature, expired, revoked."""
        if not cookie or cookie.count(".") != 1:
            return None
        text, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign(text)):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            session = Session(
                str(data["op"]), int(data["exp"]), str(data["csrf"]), str(data["sid"])
            )
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        moment = now if now is not None else time.time()
        with self._lock:
            if session.expires <= moment or session.sid in self._revoked:
                return None
        return session

    def close(self, session: Session) -> None:
        """Sign-out: the session's cookie is refused from now on, wherever it was copied."""
        now = time.time()
        with self._lock:
            self._revoked = {sid: end for sid, end in self._revoked.items() if end > now}
            self._revoked[session.sid] = session.expires

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()


def csrf_ok(session: Session, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(session.csrf.encode(), given.encode())


def sign_in_possible(admin_token: str | None, auth: Authenticator) -> bool:
    """Whether any credential could sign in: without an admin token or a SMART client allowed
    `admin`, the console stays shut (it shows patients' data; /admin's open mode is no model)."""
    return admin_token is not None or _smart_admin(auth) is not None


def operator_for(token: str, admin_token: str | None, auth: Authenticator) -> str | None:
    """Who a sign-in token names: the admin token, or a valid SMART access token with the
    `admin` scope; None for anything else."""
    token = token.strip()
    if not token:
        return None
    if admin_token is not None and hmac.compare_digest(token.encode(), admin_token.encode()):
        return TOKEN_ACTOR
    smart = _smart_admin(auth)
    if smart is None or token.count(".") != 2:
        return None
    try:
        principal = smart.verify(token)
    except InvalidAccessToken:
        return None
    return f"smart:{principal.client_id}" if ADMIN_SCOPE in principal.scopes else None


def _smart_admin(auth: Authenticator) -> SmartBackendAuth | None:
    """The SMART authenticator, when one of its clients may be granted `admin`."""
    if not isinstance(auth, SmartBackendAuth):
        return None
    return auth if any(ADMIN_SCOPE in c.scopes for c in auth.clients.values()) else None
