"""The SMART Backend Services clients file (`--smart-clients`): who may ask for a token.

```yaml
clients:
  - client_id: lab-interface
    scopes: [system/Observation.cru]
    keys:
      - kid: lab-2025                         # optional; matched against the assertion's kid
        pem: |
          -----BEGIN PUBLIC KEY-----
          …
      - {kty: EC, crv: P-384, kid: lab-2026, x: "…", y: "…"}   # or a public JWK
  - client_id: dr-lee-ehr
    scopes: [user/QuestionnaireResponse.cu]
    fhir_user: Practitioner/1234567893      # tokens of this client act for this prescriber
    jwks: {keys: [...]}                       # a whole JWKS also works
```

Strictly read: unknown keys, private key material, keys other than RSA (≥ 2048 bits, RS384) or
EC P-384 (ES384), unknown scopes and duplicate client ids are errors naming where.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.fhir.scopes import valid_scope

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
Model = TypeVar("Model", bound=BaseModel)
Algorithm = Literal["RS384", "ES384"]
PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
MIN_RSA_BITS = 2048
_FHIR_USER = re.compile(
    r"^(Practitioner|PractitionerRole|Patient|RelatedPerson|Person)/[A-Za-z0-9\-.]{1,64}$"
)


class SmartClientsError(ValueError):
    """The clients file cannot be used; one line naming the place."""


@dataclass(frozen=True)
class ClientKey:
    key: PublicKey
    algorithm: Algorithm
    kid: str | None


class PemKey(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pem: str
    kid: str | None = None


class Jwk(BaseModel):
    """A public JWK; only the members RFC 7517/7518 define for RSA and EC public keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    kty: Literal["RSA", "EC"]
    kid: str | None = None
    alg: Algorithm | None = None
    use: Literal["sig"] | None = None
    key_ops: list[str] | None = None
    crv: str | None = None
    x: str | None = None
    y: str | None = None
    n: str | None = None
    e: str | None = None
    x5c: list[str] | None = None
    x5t: str | None = None
    x5t_s256: str | None = Field(None, alias="x5t#S256")
    ext: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _public_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and PRIVATE_JWK_MEMBERS & set(data):
            raise ValueError("holds private key material: give the public key only")
        return data


class Jwks(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: list[Jwk] = Field(min_length=1)


class SmartClient(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    client_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._~:/-]+$")
    scopes: list[str] = Field(min_length=1)
    keys: list[PemKey | Jwk] = []
    jwks: Jwks | None = None
    fhir_user: str | None = None
    description: str | None = None

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, scopes: list[str]) -> list[str]:
        unknown = [s for s in scopes if not valid_scope(s)]
        if unknown:
            raise ValueError(
                f"not a SMART scope: {', '.join(unknown)} (e.g. system/Observation.cru, admin)"
            )
        return scopes

    @field_validator("fhir_user")
    @classmethod
    def _fhir_user(cls, value: str | None) -> str | None:
        if value is not None and not _FHIR_USER.match(value):
            raise ValueError("must be a relative reference such as Practitioner/1234567893")
        return value

    @model_validator(mode="after")
    def _has_keys(self) -> SmartClient:
        if not self.keys and self.jwks is None:
            raise ValueError("give the client's public key(s) in keys or jwks")
        self.public_keys()  # every key must load
        return self

    def public_keys(self) -> list[ClientKey]:
        entries = [*self.keys, *(self.jwks.keys if self.jwks else [])]
        return [client_key(entry) for entry in entries]


def unique(name: str) -> AfterValidator:
    """A list's validator: no two of its items have the same `name` (an id in its file)."""

    def check(items: list[Any]) -> list[Any]:
        seen: set[Any] = set()
        for value in (getattr(item, name) for item in items):
            if value in seen:
                raise ValueError(f"{name} {value!r} appears twice")
            seen.add(value)
        return items

    return AfterValidator(check)


class ClientsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    clients: Annotated[list[SmartClient], unique("client_id")]


def client_key(entry: PemKey | Jwk) -> ClientKey:
    """The usable public key of a PEM or JWK entry, or ValueError saying why not."""
    if isinstance(entry, PemKey):
        try:
            key = load_pem_public_key(entry.pem.encode())
        except ValueError:
            raise ValueError("pem is not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
        kid = entry.kid
    else:
        data = json.dumps(entry.model_dump(by_alias=True, exclude_none=True))
        loader = RSAAlgorithm if entry.kty == "RSA" else ECAlgorithm
        try:
            key = loader.from_jwk(data)
        except Exception:  # PyJWT raises several types for a malformed JWK
            raise ValueError(f"JWK {entry.kid or ''} is not a valid {entry.kty} key") from None
        kid = entry.kid
    algorithm = _algorithm(key)
    if isinstance(entry, Jwk) and entry.alg not in (None, algorithm):
        raise ValueError(f"JWK alg {entry.alg} does not fit its key ({algorithm})")
    return ClientKey(key, algorithm, kid)  # type: ignore[arg-type]


def _algorithm(key: Any) -> Algorithm:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA keys need at least {MIN_RSA_BITS} bits")
        return "RS384"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP384R1):
            raise ValueError("EC keys must be on P-384 (ES384)")
        return "ES384"
    raise ValueError("only RSA (RS384) and EC P-384 (ES384) public keys are accepted")


def load_clients(path: Path) -> dict[str, SmartClient]:
    """The clients by id, or SmartClientsError naming the file and the place."""
    parsed = read_strictly(path, ClientsFile, SmartClientsError, "smart clients file")
    return {client.client_id: client for client in parsed.clients}


def read_strictly(
    path: Path,
    model: type[Model],
    error: type[ValueError],
    what: str,
    context: dict[str, Any] | None = None,
) -> Model:
    """A YAML file read as `model` (`context` goes to its validators), or `error`: one line
    naming `what` file and the place in it."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{what} {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise error(f"{what} {path}: not valid YAML") from exc
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise error(f"{what} {path}: {describe_errors(exc)}") from None


def describe_errors(error: ValidationError) -> str:
    """Pydantic's errors as `place: problem; …`, without the offending values."""
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)
