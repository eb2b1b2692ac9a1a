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
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mllp import order_workload, registry, workload  # noqa: E402  (the same patients and messages)

HOST = "127.0.0.1"
ADMIN_TOKEN = "bench-admin-token"
START, END = b"\x0b", b"\x1c\r"
TICKS = os.sysconf("SC_CLK_TCK")
TARGETS = {("SQLite", 8): 3000.0, ("SQLite", 1): 1200.0, ("PostgreSQL", 8): 1500.0}
ORDER_TARGETS = {("SQLite", 8): 800.0}  # RDE^O11 decisions durably stored
SENDERS_YAML = """accept_unknown: false
senders:
  - application: LAB
    facility: GENERAL HOSP
  - application: LABSYS
    facility: COUNTY
    local_codes: {ANC: 751-8}
  - application: PHARMSYS
    facility: GENERAL HOSP
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


def messages(count: int, seed: int, orders: bool = False) -> list[tuple[str, bytes]]:
    """``count`` unique ORU^R01 (control id, bytes): bench/mllp.py's mix, resends left out; with
    ``orders``, RDE^O11 clozapine refills for the same patients instead."""
    build = order_workload if orders else workload
    work = build(count + count // 100 + 2, datetime.now(UTC), seed=seed)
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


async def load(
    ports: list[int], built: list[tuple[str, bytes]], connections: int
) -> dict[str, Any]:
    """``connections`` connections spread round robin over the servers' ports (a load balancer's
    sticky connections): each sends its share of the messages."""
    shares = [built[k::connections] for k in range(connections)]
    started = time.perf_counter()
    done = await asyncio.gather(
        *(_connection(ports[k % len(ports)], s) for k, s in enumerate(shares))
    )
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
    ports, count, connections, seed, orders = json.loads(spec)
    built = messages(count, seed, orders)
    print(json.dumps(asyncio.run(load(ports, built, connections))))


# --- the servers ------------------------------------------------------------------------------


class Server:
    """One or more server processes that share the load (and, for gateways, one database)."""

    def __init__(self, label: str, processes: int = 1) -> None:
        self.label = label
        self.ports = [free_port() for _ in range(processes)]
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def writer_times(self) -> WriterTimes | None:
        return None

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(30)
        self.processes = []


class PythonHl7(Server):
    def start(self) -> None:
        command = [sys.executable, "-c", PEER_SCRIPT, str(self.ports[0])]
        self.processes = [subprocess.Popen(command)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, self.ports[0]), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("python-hl7 server did not start")


class Gateway(Server):
    """``processes`` `rems-gateway serve` on one database (several gateways: PostgreSQL)."""

    def __init__(
        self, label: str, url: str, senders: Path, processes: int = 1, load_registry: bool = True
    ) -> None:
        super().__init__(label, processes)
        self.url, self.senders, self.load_registry = url, senders, load_registry
        self.http_ports = [free_port() for _ in range(processes)]

    def start(self) -> None:
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        for mllp_port, http_port in zip(self.ports, self.http_ports, strict=True):
            command = [
                str(Path(sys.executable).parent / "rems-gateway"),
                "serve",
                "--db",
                self.url,
                "--http-port",
                str(http_port),
                "--mllp-port",
                str(mllp_port),
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
            self.processes.append(subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL))
            wait_ready(http_port, self.processes[-1])  # one at a time: one migrates the schema
        if self.load_registry:
            answer = httpx.post(
                f"http://{HOST}:{self.http_ports[0]}/admin/registry",
                json=registry(date.today()).model_dump(mode="json"),
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                timeout=600,
            )
            answer.raise_for_status()

    def writer_times(self) -> WriterTimes:
        """The writers' counters from every process's /metrics, summed."""
        total = WriterTimes()
        for port in self.http_ports:
            text = httpx.get(f"http://{HOST}:{port}/metrics", timeout=10).text
            total.add(WriterTimes.parse(text))
        return total


@dataclass
class WriterTimes:
    """The writer's counters (gateway/metrics.py): units, commits, busy and CPU seconds, and
    the chain head lock's wait and hold per batch (histogram buckets, not cumulative)."""

    units: float = 0.0
    commits: float = 0.0
    busy: float = 0.0
    cpu: float = 0.0
    wait: float = 0.0
    hold: float = 0.0
    hold_buckets: dict[float, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> WriterTimes:
        times, cumulative = cls(), {}
        names = {
            "rems_writer_units_total": "units",
            "rems_writer_commits_total": "commits",
            "rems_writer_busy_seconds_total": "busy",
            "rems_writer_cpu_seconds_total": "cpu",
            "rems_writer_chain_lock_wait_seconds_sum": "wait",
            "rems_writer_chain_lock_hold_seconds_sum": "hold",
        }
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in names:
                    setattr(times, names[sample.name], sample.value)
                elif sample.name == "rems_writer_chain_lock_hold_seconds_bucket":
                    cumulative[float(sample.labels["le"])] = sample.value
        below = 0.0
        for bound in sorted(cumulative):
            times.hold_buckets[bound] = cumulative[bound] - below
            below = cumulative[bound]
        return times

    def add(self, other: WriterTimes) -> None:
        for name in ("units", "commits", "busy", "cpu", "wait", "hold"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for bound, count in other.hold_buckets.items():
            self.hold_buckets[bound] = self.hold_buckets.get(bound, 0.0) + count

    def since(self, before: WriterTimes) -> WriterTimes:
        delta = WriterTimes(
            **{
                name: getattr(self, name) - getattr(before, name)
                for name in ("units", "commits", "busy", "cpu", "wait", "hold")
            }
        )
        delta.hold_buckets = {
            bound: count - before.hold_buckets.get(bound, 0.0)
            for bound, count in self.hold_buckets.items()
        }
        return delta

    def hold_p99_bound(self) -> float:
        """The upper bound of the bucket that holds the 99th percentile batch."""
        target, seen = 0.99 * sum(self.hold_buckets.values()), 0.0
        for bound in sorted(self.hold_buckets):
            seen += self.hold_buckets[bound]
            if seen >= target:
                return bound
        return float("nan")


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


def measure(
    server: Server, count: int, connections: int, seed: int, orders: bool = False
) -> dict[str, Any]:
    spec = json.dumps([server.ports, count, connections, seed, orders])
    before, writer_before = server_ticks(server), server.writer_times()
    done = subprocess.run(
        [sys.executable, __file__, "--load", spec], capture_output=True, check=True, timeout=1800
    )
    result = json.loads(done.stdout)
    wall = count / result["rate"]  # the sending, not the load process's start
    result["cpu_ms"] = (server_ticks(server) - before) / TICKS * 1000 / count
    if writer_before is not None:
        writer = server.writer_times()
        assert writer is not None
        add_writer_figures(result, writer.since(writer_before), count, wall, len(server.ports))
    return result


def server_ticks(server: Server) -> int:
    return sum(cpu_ticks(pid) for pid in server.pids)


def add_writer_figures(
    result: dict[str, Any], writer: WriterTimes, count: int, wall: float, processes: int
) -> None:
    """Where a gateway's time goes: its writers' CPU per message (the rest is the edges':
    MLLP, parsing, ACKs), how busy the writers were, and the chain head lock per batch."""
    batches = max(writer.commits, 1.0)
    result["writer_cpu_ms"] = writer.cpu * 1000 / count
    result["edge_cpu_ms"] = result["cpu_ms"] - result["writer_cpu_ms"]
    result["writer_busy"] = writer.busy / (wall * processes)
    result["per_batch"] = writer.units / batches
    result["hold_ms"] = writer.hold * 1000 / batches
    result["hold_p99_ms"] = writer.hold_p99_bound() * 1000
    result["wait_ms"] = writer.wait * 1000 / batches
    result["lock_share"] = writer.hold / wall  # of the wall time: the chain head lock held


FIGURES = ("rate", "p50", "p99", "cpu_ms")
WRITER_FIGURES = (
    "writer_cpu_ms",
    "edge_cpu_ms",
    "writer_busy",
    "per_batch",
    "hold_ms",
    "hold_p99_ms",
    "wait_ms",
    "lock_share",
)


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    figures = FIGURES + (WRITER_FIGURES if "writer_cpu_ms" in runs[0] else ())
    return {k: statistics.median(r[k] for r in runs) for k in figures}


Rows = dict[int, tuple[dict[str, float], list[float]]]


def bench_server(server: Server, args: argparse.Namespace, check: bool) -> Rows:
    rows = {}
    server.start()
    try:
        for connections in args.connections:
            if connections < len(server.ports):
                continue  # every gateway gets at least one connection
            runs = []
            for run in range(args.runs):
                # unique control ids within one database (and across this script's runs on it)
                seed = args.seed + len(server.ports) * 100 + run * 10 + connections
                runs.append(measure(server, args.messages, connections, seed, args.orders))
            if check:
                bad = {c: n for r in runs for c, n in r["codes"].items() if c not in ("AA", "CA")}
                if bad:
                    print(f"  {server.label}, {connections} conn.: ACKs not AA/CA: {bad}")
            rows[connections] = (medians(runs), [r["rate"] for r in runs])
    finally:
        server.stop()
    return rows


def print_table(results: dict[str, Rows]) -> None:
    peer = results["python-hl7"]
    print(
        f"\n{'server':26}{'conn':>5}{'msg/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'cpu ms/msg':>11}"
        f"{'vs hl7':>8}  runs msg/s"
    )
    for label, rows in results.items():
        for connections, (median, rates) in rows.items():
            ratio = median["rate"] / peer[connections][0]["rate"] if connections in peer else 0
            print(
                f"{label:26}{connections:5d}{median['rate']:8.0f}{median['p50']:8.2f}"
                f"{median['p99']:8.2f}{median['cpu_ms']:11.3f}{ratio:8.2f}  "
                + " ".join(f"{r:.0f}" for r in rates)
            )


def print_writer_table(results: dict[str, Rows]) -> None:
    """Where each gateway's time goes, and what the writer in a process of its own could reach:
    with the edges on one core and the writer on the other, neither can go faster than one
    message per its own CPU time (1000 / max(writer, edges) msg/s, before any IPC cost)."""
    print(
        f"\n{'gateway (writers)':26}{'conn':>5}{'writer':>8}{'edges':>7}{'busy':>6}"
        f"{'units/':>7}{'lock held ms':>13}{'wait':>6}{'lock':>6}{'split':>7}"
    )
    print(
        f"{'':26}{'':>5}{'cpu ms':>8}{'cpu ms':>7}{'':>6}{'batch':>7}{'mean':>7}{'p99<=':>6}"
        f"{'ms':>6}{'held':>6}{'msg/s':>7}"
    )
    for label, rows in results.items():
        for connections, (m, _) in rows.items():
            if "writer_cpu_ms" not in m:
                continue
            ceiling = 1000 / max(m["writer_cpu_ms"], m["edge_cpu_ms"], 1e-9)
            print(
                f"{label:26}{connections:5d}{m['writer_cpu_ms']:8.3f}{m['edge_cpu_ms']:7.3f}"
                f"{m['writer_busy']:6.0%}{m['per_batch']:7.1f}{m['hold_ms']:7.2f}"
                f"{m['hold_p99_ms']:6.0f}{m['wait_ms']:6.2f}{m['lock_share']:6.0%}{ceiling:7.0f}"
            )
    print(
        "busy: wall share of each writer in batches; lock held: the audit chain head's row lock "
        "per batch (p99: bucket bound), and of the wall time over all gateways; split: the "
        "ceiling with the writer in a process of its own"
    )


def print_targets(results: dict[str, Rows], orders: bool) -> None:
    targets = ORDER_TARGETS if orders else TARGETS
    parts = []
    for (database, connections), wanted in targets.items():
        rows = results.get(f"gateway {database}")
        if rows is None or connections not in rows:
            parts.append(f"{database} >= {wanted:.0f}/s over {connections}: not measured")
            continue
        rate = rows[connections][0]["rate"]
        verdict = "met" if rate >= wanted else "NOT met"
        parts.append(f"{database} >= {wanted:.0f}/s over {connections}: {rate:.0f} {verdict}")
    print(f"\ntargets (issue {14 if orders else 19}): " + "; ".join(parts))


def counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 600 messages, 1 run")
    parser.add_argument("--connections", type=counts, default=[1, 8], help="e.g. 1,8")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("REMS_BENCH_POSTGRES_URL"),
        help="a PostgreSQL server's maintenance database: gateway runs on a fresh one",
    )
    parser.add_argument(
        "--gateways",
        type=counts,
        default=[1],
        help="PostgreSQL: this many serve processes on one database, the load split (1,2,3)",
    )
    parser.add_argument(
        "--sqlite-db",
        type=Path,
        help="run on this SQLite file as it is (e.g. filled by bench/seed_scale.py), not a new one",
    )
    parser.add_argument(
        "--postgres-db",
        help="run on this PostgreSQL database as it is (e.g. filled by bench/seed_scale.py)",
    )
    parser.add_argument("--seed", type=int, default=10, help="runs on one database: vary it")
    parser.add_argument("--postgres-only", action="store_true", help="no SQLite gateway")
    parser.add_argument(
        "--orders",
        action="store_true",
        help="RDE^O11 refills (dispense decisions) instead of ORU^R01: on a seeded database, "
        "where the patients have this month's ANC and PSF",
    )
    parser.add_argument("--load", help=argparse.SUPPRESS)  # the load process
    args = parser.parse_args()
    if args.load:
        load_main(args.load)
        return
    if args.quick:
        args.messages, args.runs = min(args.messages, 600), 1
    kind = "RDE^O11 refills" if args.orders else "ORU^R01 (bench/mllp.py's mix)"
    print(
        f"{args.messages} unique {kind} per run, medians of {args.runs} runs; "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} cores"
    )
    print("servers and load in separate processes, loopback; one message at a time per connection")
    results: dict[str, Rows] = {}
    with tempfile.TemporaryDirectory(prefix="rems-bench-serve-") as tmp:
        senders = Path(tmp) / "senders.yaml"
        senders.write_text(SENDERS_YAML)
        results["python-hl7"] = bench_server(PythonHl7("python-hl7"), args, check=False)
        sqlite_url = f"sqlite:///{args.sqlite_db or Path(tmp) / 'bench.db'}"
        # A seeded database holds the bench's patients (MRN000000…) already.
        sqlite = Gateway("gateway SQLite", sqlite_url, senders, load_registry=not args.sqlite_db)
        if not args.postgres_only:
            results["gateway SQLite"] = bench_server(sqlite, args, check=True)
        if args.postgres_url or args.postgres_db:
            results.update(bench_postgres(args, senders))
    print_table(results)
    print_writer_table(results)
    print_targets(results, args.orders)


def bench_postgres(args: argparse.Namespace, senders: Path) -> dict[str, Rows]:
    """One gateway, then each of --gateways on one database; a fresh database for each count
    unless --postgres-db names one."""
    from gateway.scenarios.runner import DatabaseFactory

    factory = DatabaseFactory(args.postgres_url) if args.postgres_url else None
    results = {}
    try:
        for processes in sorted(set(args.gateways)):
            url = args.postgres_db or (factory.fresh_url() if factory else "")
            label = "gateway PostgreSQL" + (f" x{processes}" if processes > 1 else "")
            gateway = Gateway(label, url, senders, processes, load_registry=not args.postgres_db)
            results[label] = bench_server(gateway, args, check=True)
    finally:
        if factory is not None:
            factory.close()
    return results


if __name__ == "__main__":
    main()
