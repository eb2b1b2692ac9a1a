"""CDS Hooks over HTTP: `order-sign` with prefetch (Patient, Practitioner, 10 Observations)
against the gateway (`rems-gateway serve`, one uvicorn worker) and, in the same run, a bare
FastAPI app that parses the same request as a CDS service must at the FHIR boundary (the JSON
body, each prefetched resource and the draft order validated with fhir.resources R4B) and
answers `{"cards": []}`.

The gateway runs twice: `--auth development` (no JWT) and `--auth smart` with a `cds_clients`
file, every request carrying its own ES384 JWT (signed before the timed part). Servers are
processes of their own; the load comes from this process over keep-alive connections (16 by
default), each sending one request at a time. The labs of every request are stored by a warm-up
pass first, so a measured hook takes no writer round trip: the bench counts the writer's units
and the stored observations and audit records around the measured runs. Prints req/s, p50, p99
and the ratio gateway/bare, medians of the runs. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import random
import re
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fhir_endpoint import Server, free_port, wait_ready  # noqa: E402
from mllp import PHARMACY, PRESCRIBER, monitored, registry  # noqa: E402  (200 enrolled patients)

from gateway.app.bootstrap import bootstrap  # noqa: E402
from gateway.app.context import UnitContext  # noqa: E402
from rems_core.rulepack import PackLibrary  # noqa: E402

HOST = "127.0.0.1"
SERVICE = "clozapine-rems-order-sign"
PATH = f"/cds-services/{SERVICE}"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.999.1"
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
EHR_ISS = "https://ehr.bench.example.org/fhir-oauth"
ADMIN_TOKEN = "bench-admin-token"
PATIENTS = 200
TARGET_RATIO, TARGET_P99_MS = 0.5, 100.0
CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
#: One CBC with differential as the EHR's search returns it: (LOINC, display, value, unit).
CBC = [
    ("751-8", "Neutrophils [#/volume] in Blood by Automated count", None, "10*3/uL"),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", None, "10*3/uL"),
    ("770-8", "Neutrophils/100 leukocytes in Blood by Automated count", None, "%"),
    ("764-1", "Band form neutrophils/100 leukocytes in Blood by Manual count", 2, "%"),
    ("26507-4", "Neutrophils.band form [#/volume] in Blood", None, "10*3/uL"),
]


# --- the workload -----------------------------------------------------------------------------


def _coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def patient_resource(patient: int) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": f"ehr-pat-{patient}",
        "identifier": [
            {
                "use": "usual",
                "system": "urn:oid:1.2.840.114350.1.13.861.1.7.5.737384.0",
                "value": f"E{80000 + patient}",
            },
            {
                "use": "usual",
                "type": {"text": "MRN"},
                "system": MRN_SYSTEM,
                "value": f"MRN{patient:06d}",
            },
        ],
        "active": True,
        "name": [{"use": "official", "family": "Bench", "given": [f"Patient{patient}"]}],
        "gender": "female" if patient % 2 else "male",
        "birthDate": "1980-01-01",
        "address": [
            {
                "use": "home",
                "line": ["118 Orchard St"],
                "city": "Springfield",
                "state": "IL",
                "postalCode": "62704",
                "country": "US",
            }
        ],
    }


def practitioner_resource() -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "id": "ehr-prac-1",
        "identifier": [
            {"use": "usual", "type": {"text": "NPI"}, "system": NPI_SYSTEM, "value": PRESCRIBER},
            {
                "use": "usual",
                "system": "urn:oid:1.2.840.114350.1.13.861.1.7.2.697780",
                "value": "LEEA01",
            },
        ],
        "active": True,
        "name": [{"use": "usual", "text": "Ann Lee, MD", "family": "Lee", "given": ["Ann"]}],
    }


def observation(
    patient: int, draw: int, code: str, display: str, value: float, unit: str, drawn: datetime
) -> dict[str, Any]:
    accession = f"B{patient:04d}-{draw}"
    return {
        "resourceType": "Observation",
        "id": f"ehr-obs-{patient}-{draw}-{code}",
        "identifier": [
            {
                "use": "official",
                "system": "urn:oid:1.2.840.114350.1.13.861.1.7.6.2000",
                "value": f"{accession}.{code}",
            }
        ],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                        "display": "Laboratory",
                    }
                ],
                "text": "Laboratory",
            }
        ],
        "code": _coding(LOINC, code, display),
        "subject": {"reference": f"Patient/ehr-pat-{patient}"},
        "effectiveDateTime": drawn.isoformat().replace("+00:00", "Z"),
        "issued": (drawn + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        "specimen": {
            "identifier": {
                "system": "urn:oid:1.2.840.114350.1.13.861.1.7.3.800",
                "value": accession,
            },
            "display": "Blood",
        },
    }


def cbc_draws(patient: int, now: datetime) -> list[tuple[datetime, dict[str, float]]]:
    """A patient's two CBCs (2 and 9 days ago): when drawn, and the values by LOINC."""
    rng = random.Random(patient)
    draws = []
    for days_ago in (2, 9):
        drawn = (now - timedelta(days=days_ago)).replace(minute=rng.randrange(60), second=0)
        wbc = round(rng.uniform(5.0, 9.0), 1)
        neut = rng.randint(45, 70)
        values = {
            "751-8": round(wbc * neut / 100, 2),
            "6690-2": wbc,
            "770-8": neut,
            "26507-4": round(wbc * 0.02, 2),
        }
        draws.append((drawn, values))
    return draws


def labs_bundle(patient: int, now: datetime) -> dict[str, Any]:
    """Two CBCs with differential (10 Observations), the same for a patient on every request."""
    entries = []
    for draw, (drawn, values) in enumerate(cbc_draws(patient, now)):
        for code, display, fixed, unit in CBC:
            value = fixed if fixed is not None else values[code]
            resource = observation(patient, draw, code, display, value, unit, drawn)
            entries.append(
                {
                    "fullUrl": f"https://ehr.bench.example.org/fhir/Observation/{resource['id']}",
                    "resource": resource,
                    "search": {"mode": "match"},
                }
            )
    return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}


def draft_order(n: int, patient: int, now: datetime) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": f"ehr-mr-{n}",
        "identifier": [
            {
                "use": "usual",
                "system": "urn:oid:1.2.840.114350.1.13.861.1.7.2.798268",
                "value": str(3318470 + n),
            }
        ],
        "status": "draft",
        "intent": "order",
        "category": [
            _coding(
                "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                "outpatient",
                "Outpatient",
            )
        ],
        "medicationCodeableConcept": {
            "coding": [
                {
                    "system": "urn:oid:1.2.840.114350.1.13.861.1.7.2.698288",
                    "code": "11462",
                    "display": "CLOZAPINE 100 MG PO TABS",
                },
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "197536",
                    "display": "clozapine 100 MG Oral Tablet",
                },
            ],
            "text": "cloZAPine (CLOZARIL) 100 MG tablet",
        },
        "subject": {"reference": f"Patient/ehr-pat-{patient}"},
        "authoredOn": now.isoformat().replace("+00:00", "Z"),
        "requester": {"reference": "Practitioner/ehr-prac-1", "display": "Ann Lee, MD"},
        "dosageInstruction": [
            {
                "text": "Take 1 tablet (100 mg total) by mouth nightly.",
                "timing": {
                    "repeat": {"frequency": 1, "period": 1, "periodUnit": "d", "when": ["HS"]}
                },
                "route": _coding("http://snomed.info/sct", "26643006", "Oral use"),
                "doseAndRate": [
                    {"doseQuantity": {"value": 100, "unit": "mg", "system": UCUM, "code": "mg"}}
                ],
            }
        ],
        "dispenseRequest": {
            "quantity": {"value": 7, "unit": "tablet"},
            "expectedSupplyDuration": {"value": 7, "unit": "Day", "system": UCUM, "code": "d"},
            "performer": {
                "identifier": {"system": NPI_SYSTEM, "value": PHARMACY},
                "display": "GENERAL HOSPITAL PHARMACY",
            },
        },
    }


def hook_body(n: int, patient: int, now: datetime, labs: dict[str, Any]) -> bytes:
    body = {
        "hook": "order-sign",
        "hookInstance": str(uuid.UUID(int=random.getrandbits(128), version=4)),
        "fhirServer": "https://ehr.bench.example.org/fhir/R4",
        "context": {
            "userId": "Practitioner/ehr-prac-1",
            "patientId": f"ehr-pat-{patient}",
            "encounterId": f"ehr-enc-{n}",
            "draftOrders": {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": draft_order(n, patient, now)}],
            },
        },
        "prefetch": {
            "patient": patient_resource(patient),
            "practitioner": practitioner_resource(),
            "labs": labs,
        },
    }
    return json.dumps(body).encode()


@dataclass
class Workload:
    """The hook bodies, in sending order; patients spread over them (a permutation per pass)."""

    now: datetime
    bodies: list[bytes]
    patients: list[int]

    @classmethod
    def make(cls, count: int, now: datetime, seed: int) -> Workload:
        rng = random.Random(seed)
        labs = {p: labs_bundle(p, now) for p in range(PATIENTS)}
        patients: list[int] = []
        while len(patients) < count:
            order = list(range(PATIENTS))
            rng.shuffle(order)
            patients += order
        patients = patients[:count]
        random.seed(seed)  # the hookInstances
        bodies = [hook_body(seed * 1_000_000 + n, p, now, labs[p]) for n, p in enumerate(patients)]
        return cls(now, bodies, patients)


def clinical_time(now: datetime) -> str:
    return now.isoformat().replace("+00:00", "Z")


def framed(body: bytes, port: int, now: datetime, token: str | None) -> bytes:
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: application/json\r\nX-Clinical-Time: {clinical_time(now)}\r\n"
        + (f"Authorization: Bearer {token}\r\n" if token else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# --- the EHR's JWTs ---------------------------------------------------------------------------


@dataclass
class Signer:
    """The EHR signing its CDS Hooks JWTs (ES384, as fixtures/cds-hooks/clients.example.yaml)."""

    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1())
    )
    kid: str = "bench-ehr-2026"

    def clients_file(self, path: Path) -> Path:
        jwk = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True) | {"kid": self.kid}
        entry = {"iss": EHR_ISS, "description": "bench EHR", "keys": [jwk]}
        path.write_text(yaml.safe_dump({"clients": [entry]}), encoding="utf-8")
        return path

    def tokens(self, audience: str, count: int) -> list[str]:
        """``count`` JWTs, each with its own jti (valid four minutes)."""
        now = int(time.time())
        claims = {"iss": EHR_ISS, "aud": audience, "exp": now + 240, "iat": now}
        header = {"kid": self.kid, "typ": "JWT"}
        return [
            jwt.encode(claims | {"jti": secrets.token_urlsafe(16)}, self.key, "ES384", header)
            for _ in range(count)
        ]


# --- the load ---------------------------------------------------------------------------------


async def _connection(
    port: int,
    share: list[bytes],
    deadline: float,
    cycle: bool,
    latencies: list[float],
    statuses: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        index = 0
        while time.perf_counter() < deadline:
            if index == len(share):
                if not cycle:
                    break
                index = 0
            started = time.perf_counter()
            statuses.append(await exchange(reader, writer, share[index]))
            latencies.append(time.perf_counter() - started)
            index += 1
    finally:
        writer.close()


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """One request and its whole answer; the answer's status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = CONTENT_LENGTH.search(head)
    await reader.readexactly(int(length.group(1)) if length else 0)
    return int(head.split(b" ", 2)[1])


async def load(
    port: int, built: list[bytes], connections: int, seconds: float, cycle: bool
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: list[int] = []
    shares = [built[i::connections] for i in range(connections)]
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(
        *(_connection(port, s, deadline, cycle, latencies, statuses) for s in shares)
    )
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rate": len(latencies) / elapsed,
        "elapsed": elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
        "count": len(latencies),
        "statuses": {s: statuses.count(s) for s in set(statuses)},
        "ran_out": not cycle and time.perf_counter() < deadline - 0.05,
    }


# --- the servers ------------------------------------------------------------------------------


BARE_APP = """
import sys
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fhir.resources.R4B import get_fhir_model_class

app = FastAPI()

def validated(resource):
    return get_fhir_model_class(resource["resourceType"]).model_validate(resource)

def resources(value):
    if value.get("resourceType") == "Bundle":
        return [entry["resource"] for entry in value.get("entry") or []]
    return [value]

@app.post("/cds-services/{service_id}")
async def hook(service_id: str, request: Request) -> JSONResponse:
    body = await request.json()
    for value in (body.get("prefetch") or {}).values():
        if value is not None:
            for resource in resources(value):
                validated(resource)
    for resource in resources(body["context"]["draftOrders"]):
        validated(resource)
    return JSONResponse({"cards": []})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False, server_header=False)
"""

#: `rems-gateway serve` under cProfile, one profile per thread (the event loop, the writer, the
#: read threads), written when the process exits (SIGTERM: the gateway shuts down cleanly).
PROFILED_SERVE = """
import atexit, cProfile, sys, threading
out = sys.argv.pop(1)
profiles = []
def start(*_):
    profile = cProfile.Profile()
    profiles.append((threading.current_thread().name, profile))
    profile.enable()
threading.setprofile(start)
main = cProfile.Profile()
profiles.append(("MainThread", main))
def dump():
    main.disable()
    for n, (name, profile) in enumerate(profiles):
        profile.create_stats()
        profile.dump_stats(f"{out}.{n}.{name.replace('/', '_')}")
atexit.register(dump)
main.enable()
from gateway.cli import app
app(prog_name="rems-gateway")
"""


class Bare(Server):
    def start(self, workdir: Path) -> None:  # the app as `python -c`, its port as argv[1]
        self.process = subprocess.Popen([sys.executable, "-c", BARE_APP, str(self.port)])
        wait_ready(self.port, "/docs", self.process)


class Gateway(Server):
    def __init__(
        self, label: str, signer: Signer | None = None, profile: Path | None = None
    ) -> None:
        super().__init__(label)
        self.signer = signer
        self.jwt = signer is not None
        self.profile = profile
        self.db: Path | None = None

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, workdir: Path) -> None:
        self.db = workdir / f"gateway-{self.port}.db"
        db, mllp = f"sqlite:///{self.db}", str(free_port())
        options = f"serve --timezone UTC --clock message --log-level warning --db {db}".split()
        options += ["--port", str(self.port), "--mllp-port", mllp, "--admin-token", ADMIN_TOKEN]
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        if self.signer is not None:
            clients = self.signer.clients_file(workdir / f"cds-clients-{self.port}.yaml")
            options += ["--auth", "smart", "--public-base-url", self.base]
            env["REMS_CDS_CLIENTS"] = str(clients)
        else:
            options += ["--auth", "development"]
        if self.profile is not None:
            launcher = workdir / "profiled_serve.py"
            launcher.write_text(PROFILED_SERVE)
            command = [sys.executable, str(launcher), str(self.profile), *options]
        else:
            command = [str(Path(sys.executable).parent / "rems-gateway"), *options]
        self.process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        wait_ready(self.port, "/readyz", self.process)
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}  # the registry of bench/mllp.py
        document = registry(date.today()).model_dump(mode="json")
        loaded = httpx.post(f"{self.base}/admin/registry", json=document, headers=admin, timeout=60)
        loaded.raise_for_status()

    def with_psfs(self) -> None:
        """Every patient's normal ANC yesterday and this month's signed PSF, as a clinic's would
        be (bench/mllp.py --orders), through the service on the same database beside the idle
        gateway: the orders can be authorized (each check still runs every rule)."""

        async def submit() -> None:
            with bootstrap(f"sqlite:///{self.db}", UnitContext(PackLibrary())) as app:
                await monitored(app.service)

        asyncio.run(submit())

    def writer_units(self) -> int:
        metrics = httpx.get(f"{self.base}/metrics", timeout=10).text
        found = re.search(r"^rems_writer_units_total (\S+)$", metrics, re.M)
        assert found is not None, "no rems_writer_units_total in /metrics"
        return int(float(found.group(1)))

    def stored(self) -> dict[str, int]:
        """Rows of the tables a hook could write: its labs, their audit records, the cards."""
        assert self.db is not None
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            return {
                table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("observation", "anc_result", "audit_record", "cds_card")
            }

    def settled(self, cards: int) -> dict[str, int]:
        """The stored counts once ``cards`` cards are kept (they are kept without waiting)."""
        deadline = time.monotonic() + 30
        while True:
            counts = self.stored()
            if counts["cds_card"] >= cards or time.monotonic() > deadline:
                return counts
            time.sleep(0.05)


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    runs: list[dict[str, Any]]

    @property
    def median(self) -> dict[str, float]:
        keys = ("rate", "p50", "p99", "cpu")
        return {k: statistics.median(r[k] for r in self.runs) for k in keys}


def measure(server: Server, workload: Workload, args: argparse.Namespace) -> dict[str, Any]:
    signer = server.signer if isinstance(server, Gateway) else None
    tokens: list[str | None] = [None] * len(workload.bodies)
    if signer is not None:
        # a JWT per request, signed before the timed part: as many as this run can send
        count = min(len(workload.bodies), int(args.seconds * args.jwt_rate_cap) + 1)
        tokens = [*signer.tokens(server.base + PATH, count)]
    built = [
        framed(b, server.port, workload.now, t)
        for b, t in zip(workload.bodies, tokens, strict=False)
    ]
    assert server.process is not None
    cpu = cpu_seconds(server.process.pid)
    result = asyncio.run(
        load(server.port, built, args.connections, args.seconds, cycle=signer is None)
    )
    result["cpu"] = (cpu_seconds(server.process.pid) - cpu) / result["elapsed"]
    return result


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def warm_up(gateway: Gateway, workload: Workload, connections: int) -> dict[str, int]:
    """One hook per patient: their labs are stored now, not during the measured runs."""
    first: dict[int, bytes] = {}
    for body, patient in zip(workload.bodies, workload.patients, strict=True):
        first.setdefault(patient, body)
    signer = gateway.signer
    tokens = signer.tokens(gateway.base + PATH, len(first)) if signer else [None] * len(first)
    built = [
        framed(b, gateway.port, workload.now, t)
        for b, t in zip(first.values(), tokens, strict=True)
    ]
    result = asyncio.run(load(gateway.port, built, connections, 600, cycle=False))
    if set(result["statuses"]) != {200}:
        raise RuntimeError(f"warm-up of {gateway.label}: statuses {result['statuses']}")
    return gateway.settled(len(first))


def outcomes(gateway: Gateway, workload: Workload) -> dict[str, int]:
    """The cards of a few hooks (what the measured requests are answered)."""
    signer = gateway.signer
    seen: dict[str, int] = {}
    for body in workload.bodies[:50]:
        headers = {
            "Content-Type": "application/json",
            "X-Clinical-Time": clinical_time(workload.now),
        }
        if signer is not None:
            headers["Authorization"] = "Bearer " + signer.tokens(gateway.base + PATH, 1)[0]
        answer = httpx.post(gateway.base + PATH, content=body, headers=headers, timeout=30)
        answer.raise_for_status()
        for card in answer.json()["cards"]:
            seen[card["indicator"]] = seen.get(card["indicator"], 0) + 1
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--requests", type=int, default=4000, help="distinct hook bodies")
    parser.add_argument(
        "--jwt-rate-cap",
        type=float,
        default=1500.0,
        help="JWTs signed per second of a run (more than it can send)",
    )
    parser.add_argument("--no-jwt", action="store_true", help="skip the --auth smart gateway")
    parser.add_argument(
        "--profile",
        type=int,
        metavar="TOP",
        default=0,
        help="run the development gateway under cProfile; print TOP functions",
    )
    parser.add_argument(
        "--py-spy",
        metavar="PATH",
        help="py-spy executable: sample the development gateway during its first run",
    )
    parser.add_argument("--spy-top", type=int, default=40, help="functions the summary lists")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 run of 2 s")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.runs = 2.0, 1
    now = datetime.now(UTC).replace(microsecond=0)
    workload = Workload.make(args.requests, now, seed=1)
    size = statistics.median(len(b) for b in workload.bodies)
    print(
        f"order-sign, prefetch Patient + Practitioner + 10 Observations, 1 clozapine draft order "
        f"({size / 1024:.1f} KiB); {args.connections} keep-alive connections, one request at a "
        f"time each; medians of {args.runs} runs of {args.seconds:g} s, servers in turn; Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} cores"
    )
    print(
        "gateway: rems-gateway serve (one uvicorn worker, SQLite WAL synchronous=FULL, "
        "--clock message); bare: FastAPI + R4B validation of each resource, no cards"
    )
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rems-bench-cds-") as tmp:
        workdir = Path(tmp)
        profile = workdir / "serve.prof" if args.profile else None
        servers: list[Server] = [Bare("bare"), Gateway("gateway", profile=profile)]
        if not args.no_jwt:
            servers.append(Gateway("gateway+JWT", Signer()))
        rows = [Row(server.label, []) for server in servers]
        gateways = [s for s in servers if isinstance(s, Gateway)]
        try:
            for server in servers:
                server.start(workdir)
            before: dict[str, tuple[int, dict[str, int]]] = {}
            for gateway in gateways:
                gateway.with_psfs()
                warmed = warm_up(gateway, workload, args.connections)
                notes.append(
                    f"{gateway.label}: warm-up stored {warmed['observation']} observations "
                    f"({warmed['anc_result']} ANCs); cards of 50 hooks by indicator "
                    f"{outcomes(gateway, workload)}"
                )
                before[gateway.label] = (gateway.writer_units(), gateway.settled(0))
            for run in range(args.runs):
                for server, row in zip(servers, rows, strict=True):
                    spy = None
                    if args.py_spy and run == 0 and server is servers[1]:
                        spy = start_py_spy(args.py_spy, server, args.seconds, workdir)
                    row.runs.append(measure(server, workload, args))
                    if spy is not None:
                        spy.wait(60)
                        notes.append(spy_summary(SPY_OUT, args.spy_top))
            for gateway, row in zip(servers[1:], rows[1:], strict=True):
                assert isinstance(gateway, Gateway)
                notes.append(no_writes(gateway, row, *before[gateway.label]))
            for row in rows:
                bad = {s: n for r in row.runs for s, n in r["statuses"].items() if s != 200}
                if bad:
                    notes.append(f"{row.label}: unexpected statuses {bad}")
                if any(r["ran_out"] for r in row.runs):
                    notes.append(f"{row.label}: ran out of pre-signed JWTs: raise --jwt-rate-cap")
        finally:
            for server in servers:
                server.stop()
        print_table(rows, notes)
        if profile is not None:
            print_profile(workdir, profile.name, args.profile)


def no_writes(gateway: Gateway, row: Row, units_before: int, before: dict[str, int]) -> str:
    """What the measured hooks wrote: the cards only (kept without the answer waiting)."""
    hooks = sum(r["count"] for r in row.runs)
    after = gateway.settled(before["cds_card"] + hooks)
    units = gateway.writer_units() - units_before
    grew = {t: after[t] - before[t] for t in after if t != "cds_card" and after[t] != before[t]}
    return (
        f"{gateway.label}: {hooks} measured hooks -> writer units {units}, cards kept "
        f"{after['cds_card'] - before['cds_card']} (not waited for); labs and audit rows "
        f"written: {grew or 'none'}"
    )


def print_table(rows: list[Row], notes: list[str]) -> None:
    head = f"{'server':14s}{'req/s':>8s}{'p50 ms':>8s}{'p99 ms':>8s}{'cpu':>6s}{'vs bare':>9s}"
    print(f"\n{head}  runs req/s")
    bare = rows[0]
    ratios = {
        row.label: statistics.median(
            r["rate"] / b["rate"] for r, b in zip(row.runs, bare.runs, strict=True)
        )
        for row in rows
    }  # each run against the bare server's run just before it
    for row in rows:
        m = row.median
        listed = " ".join(f"{r['rate']:.0f}" for r in row.runs)
        print(
            f"{row.label:14s}{m['rate']:8.0f}{m['p50']:8.1f}{m['p99']:8.1f}{m['cpu']:6.2f}"
            f"{ratios[row.label]:9.2f}  {listed}"
        )
    print("  (cpu: the server process's CPU seconds per second; vs bare: the median of each run's")
    print("  rate over the bare server's run just before it)")
    print()
    for note in notes:
        print(f"  {note}")
    print(f"\ntargets: >= {TARGET_RATIO} x the bare server's rate, p99 <= {TARGET_P99_MS:.0f} ms")
    for row in rows[1:]:
        m = row.median
        ratio = ratios[row.label]
        print(
            f"  {row.label:12s} ratio {ratio:.2f} {'met' if ratio >= TARGET_RATIO else 'NOT met'}"
            f"; p99 {m['p99']:.1f} ms {'met' if m['p99'] <= TARGET_P99_MS else 'NOT met'}"
        )


def start_py_spy(
    executable: str, server: Server, seconds: float, workdir: Path
) -> subprocess.Popen[bytes]:
    assert server.process is not None
    command = [executable, "record", "-p", str(server.process.pid), "-d", str(int(seconds))]
    command += ["-r", "250", "--format", "raw", "--threads", "--nonblocking", "-o", str(SPY_OUT)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


SPY_OUT = Path(tempfile.gettempdir()) / "rems-bench-cds-py-spy.txt"  # kept: collapsed stacks
PROJECT = re.compile(r"\((gateway|mappings|rems_core)/")  # py-spy names them so
IDLE = ("select", "get (queue", "wait (threading", "acquire", "_worker (concurrent")


def spy_summary(path: Path, top: int) -> str:
    """Busy samples by thread, and the project's functions by inclusive share of them."""
    threads: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    busy = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if any(mark in frames[-1] for mark in IDLE):
            continue
        samples = int(count)
        thread = re.sub(r"^thread \(\d+\): ", "", frames[0])
        thread = re.sub(r"_\d+$", "", thread)  # the read threads as one
        threads[thread] = threads.get(thread, 0) + samples
        busy += samples
        for frame in {f for f in frames[1:] if PROJECT.search(f)}:
            inclusive[frame] = inclusive.get(frame, 0) + samples
    listed = sorted(threads.items(), key=lambda item: -item[1])
    lines = [f"py-spy ({path}): {busy} busy samples (250/s); by thread: "
             + ", ".join(f"{name} {n}" for name, n in listed)]  # fmt: skip
    for frame, samples in sorted(inclusive.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"    {100 * samples / busy:5.1f}%  {frame}")
    return "\n".join(lines)


def print_profile(workdir: Path, prefix: str, top: int) -> None:
    files = sorted(workdir.glob(f"{prefix}.*"))
    loop = [f for f in files if f.name.endswith("MainThread")]
    threads = [f for f in files if not f.name.endswith("MainThread")]
    for title, group in (("event loop (main thread)", loop), ("other threads", threads)):
        if not group:
            continue
        stats = pstats.Stats(*map(str, group))
        print(f"\n== profile: {title}, {len(group)} profile(s), by cumulative time")
        stats.sort_stats("cumulative").print_stats(top)
        print(f"\n== profile: {title}, by own time")
        stats.sort_stats("tottime").print_stats(top)


if __name__ == "__main__":
    main()
