"""The whole `rems-gateway serve` process over MLLP: ORU^R01 lab results per second, ACK latency
and server CPU per message, over 1 and over 8 connections, for the gateway (its own process,
SQLite WAL synchronous=FULL, and with --postgres-url also a fresh PostgreSQL database) and, in
the same run, python-hl7's asyncio MLLP server (parse + ``create_ack()``, storing nothing) as the
library peer in a process of its own.

    python bench/serve.py [--messages 6000] [--runs 3] [--quick] [--postgres-url URL]

Each measurement runs in a load process of its own (this script with --load): it builds unique
messages with bench/mllp.py's workload (resends left out, a seed per run so that no control id
repeats) and sends them over N connections, each one message at a time, waiting for its ACK
(MLLP framing). Server CPU is utime + stime of the server process (all threads) from
/proc/<pid>/stat, before and after, per message. Prints medians of --runs and the ratio
gateway/python-hl7. FHIR creates are measured by bench/fhir_endpoint.py. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mllp import registry, workload  # noqa: E402  (the same patients and messages)

HOST = "127.0.0.1"
ADMIN_TOKEN = "bench-admin-token"
START, END = b"\x0b", b"\x1c\r"
TICKS = os.sysconf("SC_CLK_TCK")
TARGETS = {("SQLite", 8): 3000.0, ("SQLite", 1): 1200.0, ("PostgreSQL", 8): 1500.0}
SENDERS_YAML = """accept_unknown: false
senders:
  - application: LAB
    facility: GENERAL HOSP
  - application: LABSYS
    facility: COUNTY
    local_codes: {ANC: 751-8}
"""
PEER_SCRIPT = """
import asyncio, sys
import hl7.mllp

async def on_client(reader, writer):
    try:
        while True:
            message = await reader.readmessage()
            writer.writemessage(message.create_ack())
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main():
    server = await hl7.mllp.start_hl7_server(on_client, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


# --- the load process -------------------------------------------------------------------------


def messages(count: int, seed: int) -> list[tuple[str, bytes]]:
    """``count`` unique ORU^R01 (control id, bytes): bench/mllp.py's mix, resends left out."""
    work = workload(count + count // 100 + 2, datetime.now(UTC), seed=seed)
    unique = [
        (cid, m)
        for i, (cid, m) in enumerate(zip(work.control_ids, work.messages, strict=True))
        if i not in work.duplicates
    ]
    return unique[:count]


async def _connection(port: int, share: list[tuple[str, bytes]]) -> tuple[list[float], list[str]]:
    reader, writer = await asyncio.open_connection(HOST, port)
    latencies, codes = [], []
    clock = time.perf_counter
    try:
        for cid, message in share:
            started = clock()
            writer.write(START + message + END)
            reply = await reader.readuntil(END)
            latencies.append(clock() - started)
            msa = next((s for s in reply.split(b"\r") if s.startswith(b"MSA|")), b"").split(b"|")
            ok = len(msa) > 2 and msa[2].decode() == cid
            codes.append(msa[1].decode() if ok else "wrong MSA-2")
    finally:
        writer.close()
    return latencies, codes


async def load(port: int, built: list[tuple[str, bytes]], connections: int) -> dict[str, Any]:
    shares = [built[k::connections] for k in range(connections)]
    started = time.perf_counter()
    done = await asyncio.gather(*(_connection(port, s) for s in shares))
    elapsed = time.perf_counter() - started
    latencies = sorted(x for lat, _ in done for x in lat)
    codes = [c for _, cs in done for c in cs]
    return {
        "rate": len(latencies) / elapsed,
        "p50": latencies[len(latencies) // 2] * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "codes": {c: codes.count(c) for c in set(codes)},
    }


def load_main(spec: str) -> None:
    port, count, connections, seed = json.loads(spec)
    built = messages(count, seed)
    print(json.dumps(asyncio.run(load(port, built, connections))))


# --- the servers ------------------------------------------------------------------------------


class Server:
    def __init__(self, label: str) -> None:
        self.label = label
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)


class PythonHl7(Server):
    def start(self) -> None:
        command = [sys.executable, "-c", PEER_SCRIPT, str(self.port)]
        self.process = subprocess.Popen(command)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("python-hl7 server did not start")


class Gateway(Server):
    def __init__(self, label: str, url: str, senders: Path) -> None:
        super().__init__(label)
        self.url, self.senders = url, senders
        self.http_port = free_port()

    def start(self) -> None:
        command = [
            str(Path(sys.executable).parent / "rems-gateway"),
            "serve",
            "--db",
            self.url,
            "--http-port",
            str(self.http_port),
            "--mllp-port",
            str(self.port),
            "--clock",
            "message",
            "--admin-token",
            ADMIN_TOKEN,
            "--timezone",
            "UTC",
            "--senders",
            str(self.senders),
            "--log-level",
            "warning",
        ]
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        wait_ready(self.http_port, self.process)
        answer = httpx.post(
            f"http://{HOST}:{self.http_port}/admin/registry",
            json=registry(date.today()).model_dump(mode="json"),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=60,
        )
        answer.raise_for_status()


def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve on {port} exited ({process.returncode})")
        try:
            if httpx.get(f"http://{HOST}:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"serve on {port} did not become ready")


# --- the run ----------------------------------------------------------------------------------


def measure(server: Server, count: int, connections: int, seed: int) -> dict[str, Any]:
    spec = json.dumps([server.port, count, connections, seed])
    before = cpu_ticks(server.pid)
    done = subprocess.run(
        [sys.executable, __file__, "--load", spec], capture_output=True, check=True, timeout=900
    )
    result = json.loads(done.stdout)
    result["cpu_ms"] = (cpu_ticks(server.pid) - before) / TICKS * 1000 / count
    return result


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in ("rate", "p50", "p99", "cpu_ms")}


def bench_server(
    server: Server, args: argparse.Namespace, check: bool
) -> dict[int, tuple[dict[str, float], list[float]]]:
    rows = {}
    server.start()
    try:
        for connections in (1, 8):
            runs = []
            for run in range(args.runs):
                seed = 10 + run * 10 + connections  # unique control ids within one database
                runs.append(measure(server, args.messages, connections, seed))
            if check:
                bad = {c: n for r in runs for c, n in r["codes"].items() if c not in ("AA", "CA")}
                if bad:
                    print(f"  {server.label}, {connections} conn.: ACKs not AA/CA: {bad}")
            rows[connections] = (medians(runs), [r["rate"] for r in runs])
    finally:
        server.stop()
    return rows


def print_table(results: dict[str, dict[int, tuple[dict[str, float], list[float]]]]) -> None:
    peer = results["python-hl7"]
    print(
        f"\n{'server':22}{'conn':>5}{'msg/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'cpu ms/msg':>11}"
        f"{'vs hl7':>8}  runs msg/s"
    )
    for label, rows in results.items():
        for connections, (median, rates) in rows.items():
            ratio = median["rate"] / peer[connections][0]["rate"]
            print(
                f"{label:22}{connections:5d}{median['rate']:8.0f}{median['p50']:8.2f}"
                f"{median['p99']:8.2f}{median['cpu_ms']:11.3f}{ratio:8.2f}  "
                + " ".join(f"{r:.0f}" for r in rates)
            )


def print_targets(results: dict[str, dict[int, tuple[dict[str, float], list[float]]]]) -> None:
    parts = []
    for (database, connections), wanted in TARGETS.items():
        rows = results.get(f"gateway {database}")
        if rows is None:
            parts.append(f"{database} >= {wanted:.0f}/s over {connections}: not measured")
            continue
        rate = rows[connections][0]["rate"]
        verdict = "met" if rate >= wanted else "NOT met"
        parts.append(f"{database} >= {wanted:.0f}/s over {connections}: {rate:.0f} {verdict}")
    print("\ntargets (issue 19): " + "; ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 600 messages, 1 run")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("REMS_BENCH_POSTGRES_URL"),
        help="a PostgreSQL server's maintenance database: a second gateway run on a fresh one",
    )
    parser.add_argument("--load", help=argparse.SUPPRESS)  # the load process
    args = parser.parse_args()
    if args.load:
        load_main(args.load)
        return
    if args.quick:
        args.messages, args.runs = min(args.messages, 600), 1
    print(
        f"{args.messages} unique ORU^R01 per run (bench/mllp.py's mix), medians of {args.runs} "
        f"runs; Python {sys.version.split()[0]}, {os.cpu_count()} cores"
    )
    print("servers and load in separate processes, loopback; one message at a time per connection")
    results: dict[str, dict[int, tuple[dict[str, float], list[float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="rems-bench-serve-") as tmp:
        senders = Path(tmp) / "senders.yaml"
        senders.write_text(SENDERS_YAML)
        results["python-hl7"] = bench_server(PythonHl7("python-hl7"), args, check=False)
        sqlite = Gateway("gateway SQLite", f"sqlite:///{tmp}/bench.db", senders)
        results["gateway SQLite"] = bench_server(sqlite, args, check=True)
        if args.postgres_url:
            results["gateway PostgreSQL"] = bench_postgres(args, senders)
    print_table(results)
    print_targets(results)


def bench_postgres(
    args: argparse.Namespace, senders: Path
) -> dict[int, tuple[dict[str, float], list[float]]]:
    from gateway.scenarios.runner import DatabaseFactory

    factory = DatabaseFactory(args.postgres_url)
    try:
        gateway = Gateway("gateway PostgreSQL", factory.fresh_url(), senders)
        return bench_server(gateway, args, check=True)
    finally:
        factory.close()


if __name__ == "__main__":
    main()
