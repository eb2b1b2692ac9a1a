"""SMART Backend Services for the scenario runner's FHIR channel (README "FHIR security").

The runner is its own set of SMART clients: one system client (labs, dispenses, unsigned PSFs,
raw fhir steps) and, per prescriber of the file's registry, a user client whose tokens carry
`fhirUser` `Practitioner/<NPI>` (a prescriber's own signature, docs/contracts.md §3). Their keys are
made when a run starts (EC P-384, ES384) and live only in memory and in a temporary folder with
the clients file and the gateway's token signing key; nothing is kept after the run.

For a separately running gateway (`scenario clients FILE… --out DIR`, then `scenario run --via
fhir --fhir URL --smart-keys DIR`) the same clients are written to a folder instead: the clients
file the operator gives `serve --smart-clients` (public keys only; the system client also has
`admin`, for the registry and scheduled work) and one private key per client (`<client_id>.pem`,
mode 0600), which the runner reads back.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from gateway.scenarios.file import ScenarioError

SYSTEM_CLIENT = "scenario-runner"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# What the runner writes: labs (Observation create and, in Bundles, update; DiagnosticReport),
# dispenses, PSFs, client Patients (adt steps over FHIR), any resource a raw fhir step's Bundle
# carries; a raw fhir step may also read (e.g. $rems-etasu, Patient); `tasks` and `draft` expects
# search Tasks and QuestionnaireResponses.
SYSTEM_SCOPES = [
    "system/*.cu",
    "system/Observation.cruds",
    "system/DiagnosticReport.cruds",
    "system/MedicationRequest.cruds",
    "system/MedicationDispense.cruds",
    "system/QuestionnaireResponse.cruds",
    "system/Questionnaire.rs",
    "system/Patient.rs",
    "system/Patient.cu",
    "system/GuidanceResponse.rs",
    "system/Task.rs",
    "system/Organization.r",  # ship_check steps: Organization/$rems-ship-check
]
USER_SCOPES = ["user/QuestionnaireResponse.cru", "user/Questionnaire.rs"]
ADMIN_SCOPE = "admin"  # POST /admin/registry and /admin/scheduled-work on a running gateway
CLIENTS_FILE = "smart-clients.yaml"
# The runner as an EHR calling the CDS services: the system client's key signs its CDS JWTs.
CDS_CLIENTS_FILE = "cds-clients.yaml"
CDS_ISSUER = "urn:rems-gateway:scenario-runner"
PRESCRIBER_PREFIX = "scenario-prescriber-"
RENEW_BEFORE_SECONDS = 60  # tokens last at most 300 s: a new one well before the old one ends
ASSERTION_SECONDS = 240


@dataclass
class RunnerClient:
    """One SMART client of the runner: its private key stays in this process."""

    client_id: str
    scopes: list[str]
    fhir_user: str | None = None
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1())
    )
    kid: str = field(default_factory=lambda: secrets.token_hex(4))

    def entry(self) -> dict[str, Any]:
        """This client in the clients file: public key only."""
        pem = self.key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        entry: dict[str, Any] = {
            "client_id": self.client_id,
            "scopes": self.scopes,
            "keys": [{"kid": self.kid, "pem": pem.decode("ascii")}],
        }
        if self.fhir_user:
            entry["fhir_user"] = self.fhir_user
        return entry

    def assertion(self, token_url: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_url,
            "iat": now,
            "exp": now + ASSERTION_SECONDS,
            "jti": secrets.token_urlsafe(16),
        }
        return jwt.encode(claims, self.key, "ES384", headers={"kid": self.kid})

    def cds_token(self, service_url: str) -> str:
        """A CDS Hooks client JWT (docs/contracts.md §6) for one call to ``service_url``."""
        now = int(time.time())
        claims = {
            "iss": CDS_ISSUER,
            "aud": service_url,
            "iat": now,
            "exp": now + ASSERTION_SECONDS,
            "jti": secrets.token_urlsafe(16),
        }
        return jwt.encode(claims, self.key, "ES384", headers={"kid": self.kid, "typ": "JWT"})

    def cds_entry(self) -> dict[str, Any]:
        """The runner in the CDS clients file: this client's public key, as an EHR."""
        key = self.entry()["keys"]
        return {
            "iss": CDS_ISSUER,
            "description": "rems-gateway scenario runner",
            "keys": key,
            "fhir_client": self.client_id,
        }


def prescriber_client_id(npi: str) -> str:
    return f"{PRESCRIBER_PREFIX}{npi}"


@dataclass
class RunnerClients:
    """The runner's clients and the files a gateway needs to know them."""

    folder: Path
    system: RunnerClient
    prescribers: dict[str, RunnerClient]  # by NPI

    @classmethod
    def make(cls, prescriber_npis: list[str]) -> RunnerClients:
        folder = Path(tempfile.mkdtemp(prefix="rems-scenario-smart-"))
        system = RunnerClient(SYSTEM_CLIENT, SYSTEM_SCOPES)
        users = {
            npi: RunnerClient(prescriber_client_id(npi), USER_SCOPES, f"Practitioner/{npi}")
            for npi in dict.fromkeys(prescriber_npis)
        }
        clients = cls(folder, system, users)
        clients._write()
        return clients

    @property
    def clients_file(self) -> Path:
        return self.folder / "smart-clients.yaml"

    @property
    def cds_clients_file(self) -> Path:
        return self.folder / CDS_CLIENTS_FILE

    @property
    def signing_key_file(self) -> Path:
        return self.folder / "token-signing-key.pem"

    def _write(self) -> None:
        entries = [c.entry() for c in (self.system, *self.prescribers.values())]
        write_clients_file(self.clients_file, entries)
        write_clients_file(self.cds_clients_file, [self.system.cds_entry()])
        signing = ec.generate_private_key(ec.SECP384R1())
        pem = signing.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        self.signing_key_file.write_bytes(pem)
        self.signing_key_file.chmod(0o600)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def write_clients_file(path: Path, entries: list[dict[str, Any]]) -> None:
    path.write_text(yaml.safe_dump({"clients": entries}, sort_keys=False), encoding="utf-8")


# --- a folder of keys for a running gateway -----------------------------------------------------


def key_file(folder: Path, client_id: str) -> Path:
    return folder / f"{client_id}.pem"


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """The PEM, readable by its owner only (0600 from the start, not chmod'ed afterwards)."""
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(pem)
    path.chmod(0o600)  # an older file keeps its mode through O_TRUNC


def read_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ScenarioError(f"{path}: not an EC private key")
    return key


def write_key_folder(folder: Path, prescriber_npis: list[str]) -> Path:
    """The runner's clients for a running gateway: DIR/smart-clients.yaml (public keys) and one
    private key per client. Clients already in DIR keep their keys (a running gateway keeps
    accepting them) and stay listed; the given prescribers are added."""
    folder.mkdir(parents=True, exist_ok=True)
    known = read_key_folder(folder) if (folder / CLIENTS_FILE).is_file() else None
    npis = [*(known.prescribers if known else {}), *prescriber_npis]
    system = known.system if known else RunnerClient(SYSTEM_CLIENT, [*SYSTEM_SCOPES, ADMIN_SCOPE])
    users = {
        npi: (known.prescribers.get(npi) if known else None)
        or RunnerClient(prescriber_client_id(npi), USER_SCOPES, f"Practitioner/{npi}")
        for npi in dict.fromkeys(npis)
    }
    for client in (system, *users.values()):
        write_private_key(key_file(folder, client.client_id), client.key)
    write_clients_file(folder / CLIENTS_FILE, [c.entry() for c in (system, *users.values())])
    write_clients_file(folder / CDS_CLIENTS_FILE, [system.cds_entry()])
    return folder / CLIENTS_FILE


def read_key_folder(folder: Path) -> RunnerClients:
    """The clients of DIR/smart-clients.yaml whose private key is in DIR, by NPI for prescribers."""
    path = folder / CLIENTS_FILE
    try:
        entries = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("clients") or []
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise ScenarioError(f"--smart-keys {folder}: cannot read {CLIENTS_FILE}: {exc}") from None
    clients = [c for c in map(_with_key(folder), entries) if c is not None]
    system = next((c for c in clients if c.client_id == SYSTEM_CLIENT), None)
    if system is None:
        raise ScenarioError(
            f"--smart-keys {folder}: no client {SYSTEM_CLIENT} with its key: "
            "make the folder with `rems-gateway scenario clients`"
        )
    prescribers = {
        c.client_id.removeprefix(PRESCRIBER_PREFIX): c
        for c in clients
        if c.client_id.startswith(PRESCRIBER_PREFIX)
    }
    return RunnerClients(folder, system, prescribers)


def _with_key(folder: Path) -> Any:
    def client(entry: dict[str, Any]) -> RunnerClient | None:
        client_id = str(entry.get("client_id", ""))
        path = key_file(folder, client_id)
        if not client_id or not path.is_file():
            return None
        kid = str((entry.get("keys") or [{}])[0].get("kid") or secrets.token_hex(4))
        scopes = [str(s) for s in entry.get("scopes") or []]
        return RunnerClient(client_id, scopes, entry.get("fhir_user"), read_private_key(path), kid)

    return client


@dataclass
class _Token:
    value: str
    expires: float  # time.monotonic()


class TokenSource:
    """Access tokens from the gateway's `POST /auth/token`, one per client, renewed before they
    expire."""

    def __init__(self, http: httpx.AsyncClient, token_url: str) -> None:
        self.http = http
        self.token_url = token_url
        self.tokens: dict[str, _Token] = {}

    async def bearer(self, client: RunnerClient) -> dict[str, str]:
        held = self.tokens.get(client.client_id)
        if held is None or held.expires - time.monotonic() < RENEW_BEFORE_SECONDS:
            held = await self._fetch(client)
            self.tokens[client.client_id] = held
        return {"Authorization": f"Bearer {held.value}"}

    async def _fetch(self, client: RunnerClient) -> _Token:
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": client.assertion(self.token_url),
            "scope": " ".join(client.scopes),
        }
        started = time.monotonic()
        response = await self.http.post(self.token_url, data=form)
        if response.status_code != 200:
            raise ScenarioError(
                f"no access token for {client.client_id}: HTTP {response.status_code} "
                f"{_oauth_error(response)}"
            )
        answer = response.json()
        lifetime = float(answer.get("expires_in") or 0)
        return _Token(str(answer["access_token"]), started + lifetime)


def _oauth_error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return f"{body.get('error', '')}: {body.get('error_description', '')}".strip(": ")
