"""TLS for the MLLP server: its context from certificate files, and who a verified client
certificate names (for per-sender pinning)."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path
from typing import Any


def server_tls(
    cert: Path | None, key: Path | None, client_ca: Path | None
) -> ssl.SSLContext | None:
    """The server's TLS context (None without a certificate); with ``client_ca``, mutual TLS:
    a client certificate from that CA is required."""
    if cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=client_ca)
    return context


def client_certificate(ssl_object: Any) -> tuple[str | None, str | None]:
    """(RFC 4514 subject, SHA-256 fingerprint as lower-case hex) of the connection's verified
    client certificate; (None, None) without one."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None, None
    parsed = ssl_object.getpeercert() or {}
    return _rfc4514(parsed.get("subject", ())) or None, hashlib.sha256(der).hexdigest()


_RDN_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
    "serialNumber": "serialNumber",
    "emailAddress": "emailAddress",
}


def _rfc4514(subject: Any) -> str:
    """`getpeercert()['subject']` as an RFC 4514 string (most specific RDN first)."""
    rdns = []
    for rdn in subject:
        parts = [f"{_RDN_NAMES.get(name, name)}={_escape_dn(str(value))}" for name, value in rdn]
        rdns.append("+".join(parts))
    return ",".join(reversed(rdns))


def _escape_dn(value: str) -> str:
    out = "".join("\\" + ch if ch in ',+"\\<>;' else ch for ch in value)
    if out.startswith((" ", "#")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out
