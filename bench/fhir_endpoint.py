"""FHIR over HTTP: POST Observation (and POST MedicationRequest, once the route exists) against
the gateway (`rems-gateway serve`, one uvicorn worker) and, in the same run, a bare FastAPI app
that only validates the same body with fhir.resources and answers 201.

Servers run as their own processes; the load comes from a third process with keep-alive
connections (16 by default), each sending one request at a time and waiting for its answer.
Prints throughput, latency p50/p99 and the ratio gateway/bare. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mllp import PHARMACY, PRESCRIBER, registry  # noqa: E402  (the same 200 enrolled patients)

HOST = "127.0.0.1"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.999.1"
UNITS = [("10*3/uL", 1000), ("/uL", 1), ("10*9/L", 1000)]
TARGET_RATE, TARGET_P99_MS = 800.0, 50.0
ADMIN_TOKEN = "bench-admin-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# --- the workload -----------------------------------------------------------------------------


def observation(n: str, patient: int, rng: random.Random, now: datetime) -> dict[str, Any]:
    unit, factor = rng.choice(UNITS)
    anc = rng.choice([rng.randint(1500, 6000)] * 9 + [rng.randint(300, 1499)])
    value = round(anc / factor, 3) if factor > 1 else anc
    drawn = now - timedelta(hours=rng.randint(1, 48))
    return {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.3.999.5", "value": f"BENCH-{n}"}],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]},
        "subject": {"identifier": {"system": MRN_SYSTEM, "value": f"MRN{patient:06d}"}},
        "effectiveDateTime": drawn.isoformat(timespec="seconds"),
        "specimen": {"identifier": {"system": "urn:bench:accession", "value": f"ACC-{n}"}},
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        },
    }


def medication_request(n: str, patient: int, now: datetime) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "identifier": [{"system": "urn:bench:rx", "value": f"RX-{n}"}],
        "status": "active",
        "intent": "order",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                        "code": "outpatient",
                    }
                ]
            }
        ],
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197536"}]
        },
        "subject": {"identifier": {"system": MRN_SYSTEM, "value": f"MRN{patient:06d}"}},
        "authoredOn": now.isoformat(timespec="seconds"),
        "requester": {
            "identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": PRESCRIBER}
        },
        "dispenseRequest": {
            "performer": {
                "identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": PHARMACY}
            },
            "expectedSupplyDuration": {
                "value": 7,
                "unit": "days",
                "system": "http://unitsofmeasure.org",
                "code": "d",
            },
        },
    }


def requests(kind: str, count: int, port: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    path = f"/fhir/{kind}"
    built = []
    for n in range(count):
        name, patient = f"{seed}-{n}", n % 200  # unique per run: every POST is a new resource
        if kind == "Observation":
            body = observation(name, patient, rng, now)
        else:
            body = medication_request(name, patient, now)
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: application/fhir+json\r\nAccept: application/fhir+json\r\n"
            f"Prefer: return=minimal\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        built.append(head.encode() + data)
    return built


# --- the load ---------------------------------------------------------------------------------


async def _connection(port: int, share: list[bytes], latencies: list[float]) -> list[int]:
    reader, writer = await asyncio.open_connection(HOST, port)
    statuses = []
    try:
        for request in share:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            statuses.append(status)
    finally:
        writer.close()
    return statuses


async def load(port: int, built: list[bytes], connections: int) -> dict[str, Any]:
    latencies: list[float] = []
    started = time.perf_counter()
    shares = [built[i::connections] for i in range(connections)]
    results = await asyncio.gather(*(_connection(port, s, latencies) for s in shares))
    elapsed = time.perf_counter() - started
    statuses = [s for r in results for s in r]
    latencies.sort()
    return {
        "rate": len(built) / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "statuses": {s: statuses.count(s) for s in set(statuses)},
    }


# --- the servers ------------------------------------------------------------------------------


BARE_APP = """
import sys
import uvicorn
from fastapi import FastAPI, Request, Response
from fhir.resources.R4B import get_fhir_model_class

app = FastAPI()

@app.post("/fhir/{resource_type}")
async def create(resource_type: str, request: Request) -> Response:
    get_fhir_model_class(resource_type).model_validate_json(await request.body())
    return Response(status_code=201, media_type="application/fhir+json")

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False, server_header=False)
"""


def wait_ready(port: int, path: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on {port} exited ({process.returncode})")
        try:
            if httpx.get(f"http://{HOST}:{port}{path}", timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"server on {port} did not start")


class Server:
    def __init__(self, label: str) -> None:
        self.label = label
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, workdir: Path) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)


class Bare(Server):
    def start(self, workdir: Path) -> None:
        script = workdir / "bare_app.py"
        script.write_text(BARE_APP)
        self.process = subprocess.Popen([sys.executable, str(script), str(self.port)])
        wait_ready(self.port, "/docs", self.process)


class Gateway(Server):
    def start(self, workdir: Path) -> None:
        db = workdir / f"gateway-{self.port}.db"
        command = [
            str(Path(sys.executable).parent / "rems-gateway"),
            "serve",
            "--auth",
            "development",
            "--db",
            f"sqlite:///{db}",
            "--port",
            str(self.port),
            "--mllp-port",
            str(free_port()),
            "--timezone",
            "UTC",
            "--admin-token",
            ADMIN_TOKEN,
            "--log-level",
            "warning",
        ]
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        wait_ready(self.port, "/readyz", self.process)
        document = registry(date.today()).model_dump(mode="json")
        answer = httpx.post(
            f"http://{HOST}:{self.port}/admin/registry",
            json=document,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=60,
        )
        answer.raise_for_status()


def has_route(port: int, kind: str) -> bool:
    statement = httpx.get(f"http://{HOST}:{port}/fhir/metadata", timeout=5).json()
    return any(r["type"] == kind for r in statement["rest"][0]["resource"])


# --- the run ----------------------------------------------------------------------------------


def measure(server: Server, kind: str, count: int, connections: int, seed: int) -> dict[str, Any]:
    built = requests(kind, count, server.port, seed)
    return asyncio.run(load(server.port, built, connections))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 500 requests, 1 run")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.runs = 500, 1
    print(
        f"{args.requests} POSTs per run over {args.connections} keep-alive connections, "
        f"medians of {args.runs} runs; Python {sys.version.split()[0]}, {os.cpu_count()} cores"
    )
    print("gateway: rems-gateway serve (one uvicorn worker, SQLite WAL synchronous=FULL);")
    print("bare: FastAPI + fhir.resources R4B validation, answers 201, stores nothing")
    rows: list[tuple[str, str, dict[str, float], list[float]]] = []
    with tempfile.TemporaryDirectory(prefix="rems-bench-fhir-") as tmp:
        workdir = Path(tmp)
        bare, gateway = Bare("bare"), Gateway("gateway")
        bare.start(workdir)
        gateway.start(workdir)
        try:
            kinds = ["Observation"]
            if has_route(gateway.port, "MedicationRequest"):
                kinds.append("MedicationRequest")
            for kind in kinds:
                for server in (bare, gateway):
                    runs = [
                        measure(server, kind, args.requests, args.connections, seed=run)
                        for run in range(args.runs)
                    ]
                    ok = {201, 200}
                    bad = {s: n for r in runs for s, n in r["statuses"].items() if s not in ok}
                    if bad:
                        print(f"  {server.label} {kind}: unexpected statuses {bad}")
                    median = {
                        key: statistics.median(r[key] for r in runs)
                        for key in ("rate", "p50", "p99")
                    }
                    rows.append((kind, server.label, median, [r["rate"] for r in runs]))
        finally:
            gateway.stop()
            bare.stop()
    print_table(rows)


def print_table(rows: list[tuple[str, str, dict[str, float], list[float]]]) -> None:
    header = f"{'POST':20s}{'server':10s}{'req/s':>8s}{'p50 ms':>8s}{'p99 ms':>8s}"
    print(f"\n{header}{'vs bare':>9s}  runs")
    bare_rates = {kind: m["rate"] for kind, label, m, _ in rows if label == "bare"}
    for kind, label, median, runs in rows:
        ratio = median["rate"] / bare_rates[kind]
        listed = " ".join(f"{r:.0f}" for r in runs)
        print(
            f"{kind:20s}{label:10s}{median['rate']:8.0f}{median['p50']:8.1f}"
            f"{median['p99']:8.1f}{ratio:9.2f}  {listed}"
        )
    for kind, label, median, _ in rows:
        if kind == "Observation" and label == "gateway":
            met = median["rate"] >= TARGET_RATE and median["p99"] <= TARGET_P99_MS
            print(
                f"\ntarget (issue 5): >= {TARGET_RATE:.0f} Observation creates/s with p99 <= "
                f"{TARGET_P99_MS:.0f} ms: {median['rate']:.0f}/s, p99 {median['p99']:.1f} ms  "
                f"{'met' if met else 'NOT met'}"
            )


if __name__ == "__main__":
    main()
