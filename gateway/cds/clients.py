"""The CDS clients file (`cds_clients`): the EHRs that may call the CDS services.

```yaml
clients:
  - iss: https://fhir.epic.example.org/interconnect-fhir-oauth   # the EHR's JWT issuer
    description: General Hospital Epic
    jku: [https://fhir.epic.example.org/…/jwks]    # JWKS URLs its JWTs may name
    keys: [...]                 # or public keys inline (PEM or JWK, as the SMART clients file)
    jwks: {keys: [...]}         # or an inline JWKS
    jwks_file: epic-jwks.json   # or a JWKS file, relative to this file's folder
    fhir_servers: [https://fhir.epic.example.org/api/FHIR/R4]   # prefetch may be fetched here
    fhir_client: epic-general   # its SMART client: context.patientId names that client's Patients
    pharmacy_npi: "1679576722"  # the pharmacy that fills its discharge orders
```

Read as strictly as the SMART clients file: unknown keys, private key material, keys other than
RS384/ES384, plain-http URLs outside loopback and a second entry for one iss are errors naming
where. The issuer and the URLs are allow-lists: a JWT is only checked against what is here.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.fhir.smart_clients import (
    ClientKey,
    Jwk,
    Jwks,
    PemKey,
    client_key,
    describe_errors,
    read_strictly,
    unique,
)
from rems_core.registry import Npi

LOOPBACK_NAMES = {"localhost"}


class CdsClientsError(ValueError):
    """The CDS clients file cannot be used; one line naming the file and the place."""


def is_loopback_url(url: str) -> bool:
    """An http(s) URL whose host is this machine (127.0.0.1, ::1, localhost)."""
    host = urlsplit(url).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in LOOPBACK_NAMES


def _checked_url(url: str) -> str:
    """An https URL (http for loopback only) without query or fragment."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url} is not an https URL")
    if parts.scheme == "http" and not is_loopback_url(url):
        raise ValueError(f"{url} must use https (plain http only for 127.0.0.1, ::1, localhost)")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"{url} must have no query or fragment")
    return url


class CdsClient(BaseModel):
    """One EHR calling the CDS services, and what the gateway does on its behalf."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    iss: str = Field(min_length=1, max_length=512)
    description: str | None = None
    jku: list[str] = []
    keys: list[PemKey | Jwk] = []
    jwks: Jwks | None = None
    jwks_file: Path | None = None
    fhir_servers: list[str] = []
    fhir_client: str | None = Field(
        None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._~:/-]+$"
    )
    pharmacy_npi: Npi | None = None
    _file_keys: list[ClientKey] = PrivateAttr(default_factory=list)

    @field_validator("jku")
    @classmethod
    def _jwks_urls(cls, urls: list[str]) -> list[str]:
        """Kept as written: a JWT's jku must be one of them exactly."""
        return [_checked_url(url) for url in urls]

    @field_validator("fhir_servers")
    @classmethod
    def _fhir_bases(cls, urls: list[str]) -> list[str]:
        """FHIR base URLs, compared without their trailing slash."""
        return [_checked_url(url).rstrip("/") for url in urls]

    @field_validator("jwks_file")
    @classmethod
    def _beside_the_file(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        folder = (info.context or {}).get("folder")
        return folder / path if path is not None and folder is not None else path

    @model_validator(mode="after")
    def _has_keys(self) -> CdsClient:
        if not (self.keys or self.jwks or self.jwks_file or self.jku):
            raise ValueError("give the EHR's public key(s): keys, jwks, jwks_file or jku")
        if self.jwks_file is not None:
            self._file_keys = [client_key(entry) for entry in read_jwks_file(self.jwks_file).keys]
        self.public_keys()  # every inline key must load
        return self

    def public_keys(self) -> list[ClientKey]:
        """The keys held here (inline and from jwks_file); the jku keys are fetched when used."""
        entries = [*self.keys, *(self.jwks.keys if self.jwks else [])]
        return [*(client_key(entry) for entry in entries), *self._file_keys]

    def may_fetch(self, fhir_server: str) -> bool:
        """Whether the gateway may send this EHR's fhirAuthorization to that fhirServer."""
        return fhir_server.rstrip("/") in self.fhir_servers


class DevelopmentCdsClient(CdsClient):
    """`--auth development`: any caller, fetched from its FHIR server only on this machine."""

    @classmethod
    def make(cls) -> DevelopmentCdsClient:
        return cls.model_construct(iss="development", description="--auth development")

    def may_fetch(self, fhir_server: str) -> bool:
        try:
            return is_loopback_url(_checked_url(fhir_server))
        except ValueError:
            return False


def read_jwks_file(path: Path) -> Jwks:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"jwks_file {path}: {exc.strerror}") from None
    except ValueError:
        raise ValueError(f"jwks_file {path}: not JSON") from None
    try:
        return Jwks.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"jwks_file {path}: {describe_errors(exc)}") from None


class CdsClientsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    clients: Annotated[list[CdsClient], unique("iss")]


def load_cds_clients(path: Path) -> dict[str, CdsClient]:
    """The CDS clients by iss, or CdsClientsError naming the file and the place."""
    folder = {"folder": path.parent}  # where a relative jwks_file is
    parsed = read_strictly(path, CdsClientsFile, CdsClientsError, "cds clients file", folder)
    return {client.iss: client for client in parsed.clients}
