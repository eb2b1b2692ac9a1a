"""Decisions per second: the pure engine, and through the application service on SQLite with
durable commits (WAL, synchronous=FULL). Prints medians of several runs and ratios against
baselines measured in the same run.

    python bench/decide.py [--runs 5] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text

from gateway.app.bootstrap import assemble
from gateway.app.context import RandomIds, UnitContext
from gateway.app.values import Source
from gateway.scenarios.runner import DatabaseFactory
from rems_core.anc import specimen_ancs
from rems_core.dispense import decide
from rems_core.model import (
    Designation,
    Designee,
    DispenseRequest,
    Identifier,
    LabResult,
    Patient,
    PatientSnapshot,
    PatientStatusForm,
    Pharmacy,
    PharmacyEnrollment,
    Prescriber,
    PsfStatus,
    PsfType,
    Setting,
    StoredPsf,
    SubmitterRole,
)
from rems_core.registry import RegistryDocument
from rems_core.rulepack import PackLibrary
from rems_core.store.db import make_engine

PRESCRIBER, PHARMACY = "1234567893", "1588667638"
DAY = datetime(2022, 3, 10, 12, tzinfo=UTC)
PATIENTS = 200


def rate(work: Callable[[int], None], seconds: float) -> float:
    """Operations per second of ``work(n)`` (which does n operations), over about ``seconds``."""
    n, elapsed = 1, 0.0
    while elapsed < seconds / 4:
        n *= 2
        start = time.perf_counter()
        work(n)
        elapsed = time.perf_counter() - start
    total = max(1, int(n * seconds / elapsed))
    start = time.perf_counter()
    work(total)
    return total / (time.perf_counter() - start)


def median_of(runs: int, measure: Callable[[], float]) -> tuple[float, list[float]]:
    values = [measure() for _ in range(runs)]
    return statistics.median(values), values


def engine_snapshot(packs: PackLibrary) -> tuple[PatientSnapshot, DispenseRequest]:
    pack = packs.get("clozapine-rems-2021")
    ancs = tuple(
        specimen_ancs(
            pack, Designation.GENERAL, [LabResult("751-8", "2000", "/uL", DAY - timedelta(days=d))]
        )[0]
        for d in range(0, 28, 7)
    )
    form = PatientStatusForm(
        PsfType.ENROLLMENT,
        DAY - timedelta(days=20),
        PRESCRIBER,
        SubmitterRole.PRESCRIBER,
        PRESCRIBER,
        signed=True,
    )
    snapshot = PatientSnapshot(
        patient=Patient("RP-1", (), Designation.GENERAL, date(2021, 1, 1)),
        anc_results=ancs,
        psfs=(StoredPsf("psf-1", form, PsfStatus.ACCEPTED, form.submitted_at),),
        prescribers={
            PRESCRIBER: Prescriber(PRESCRIBER, certified=True, designees=(Designee("D1"),))
        },
        pharmacies={
            PHARMACY: Pharmacy(
                PHARMACY, enrollments=(PharmacyEnrollment(Setting.OUTPATIENT, True),)
            )
        },
    )
    request = DispenseRequest(PHARMACY, PRESCRIBER, Setting.OUTPATIENT, DAY, 30, "197536")
    return snapshot, request


def registry() -> RegistryDocument:
    patients = [
        {
            "id": f"P{i}",
            "identifiers": [{"system": "urn:oid:2.16.840.1.113883.3.999.1", "value": f"MRN{i}"}],
            "treatment_start": "2021-01-01",
            "enrollment": {
                "by": PRESCRIBER,
                "date": "2022-03-01",
                "anc": {"value": "2100", "unit": "/uL", "drawn": "2022-02-28"},
            },
        }
        for i in range(PATIENTS)
    ]
    return RegistryDocument.model_validate(
        {
            "prescribers": [{"npi": PRESCRIBER, "certified": True}],
            "pharmacies": [
                {"npi": PHARMACY, "enrollments": [{"setting": "outpatient", "certified": True}]}
            ],
            "patients": patients,
        }
    )


class ServiceBench:
    """The application service on one database, with the registry of PATIENTS patients."""

    def __init__(self, url: str, packs: PackLibrary) -> None:
        self.engine = make_engine(url)
        application = assemble(self.engine, UnitContext(packs))
        self.writer, self.service = application.writer, application.service
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.service.load_registry(registry(), Source("bench")))
        self.request = DispenseRequest(PHARMACY, PRESCRIBER, Setting.OUTPATIENT, DAY, 30, "197536")
        self.i = 0

    def durability(self) -> str:
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "postgresql":
                sync = conn.exec_driver_sql("SHOW synchronous_commit").scalar()
                fsync = conn.exec_driver_sql("SHOW fsync").scalar()
                return f"PostgreSQL synchronous_commit={sync}, fsync={fsync}"
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            return f"SQLite journal_mode={mode}, synchronous={'FULL' if sync == 2 else sync}"

    def _ids(self) -> list[Identifier]:
        self.i += 1
        return [Identifier("urn:oid:2.16.840.1.113883.3.999.1", f"MRN{self.i % PATIENTS}")]

    def sequential(self, n: int) -> None:
        async def go() -> None:
            for _ in range(n):
                await self.service.decide_dispense(self._ids(), self.request, Source("bench"))

        self.loop.run_until_complete(go())

    def concurrent(self, n: int, in_flight: int = 64) -> None:
        async def go() -> None:
            for start in range(0, n, in_flight):
                batch = min(in_flight, n - start)
                await asyncio.gather(
                    *(
                        self.service.decide_dispense(self._ids(), self.request, Source("bench"))
                        for _ in range(batch)
                    )
                )

        self.loop.run_until_complete(go())

    def threads(self, seconds: float, count: int = 8) -> tuple[float, float, float]:
        """``count`` threads, each deciding one request after another for ``seconds``:
        decisions per second, p50 and p99 latency in ms."""
        stop_at = time.perf_counter() + seconds

        def worker(k: int) -> list[float]:
            loop = asyncio.new_event_loop()
            latencies = []
            n = k
            while time.perf_counter() < stop_at:
                n += count
                ids = [Identifier("urn:oid:2.16.840.1.113883.3.999.1", f"MRN{n % PATIENTS}")]
                started = time.perf_counter()
                loop.run_until_complete(
                    self.service.decide_dispense(ids, self.request, Source("bench", f"t{k}"))
                )
                latencies.append(time.perf_counter() - started)
            loop.close()
            return latencies

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=count) as pool:
            latencies = sorted(x for batch in pool.map(worker, range(count)) for x in batch)
        elapsed = time.perf_counter() - started
        p50 = latencies[len(latencies) // 2] * 1000
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
        return len(latencies) / elapsed, p50, p99

    def durable_commit(self, n: int) -> None:
        """Baseline: one tiny INSERT per durable COMMIT, straight on the driver."""
        with self.engine.connect() as conn:
            with conn.begin():
                conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS bench_commit (x INTEGER)")
            for i in range(n):
                with conn.begin():
                    conn.execute(text("INSERT INTO bench_commit VALUES (:x)"), {"x": i})

    def close(self) -> None:
        self.writer.stop()
        self.engine.dispose()
        self.loop.close()


def print_rows(
    rows: list[tuple[str, tuple[float, list[float]]]], baseline: float, engine: float
) -> None:
    print(f"{'measure':40} {'median/s':>10} {'vs commit':>10} {'vs engine':>10}  runs")
    for name, (median, values) in rows:
        print(
            f"{name:40} {median:10.0f} {median / baseline:10.2f} {median / engine:10.3f}  "
            + " ".join(f"{v:.0f}" for v in values)
        )


def bench_database(
    label: str, url: str, packs: PackLibrary, args: argparse.Namespace, engine_rate: float
) -> None:
    bench = ServiceBench(url, packs)
    try:
        rows = [
            (
                "durable commit, 1 row (baseline)",
                median_of(args.runs, lambda: rate(bench.durable_commit, args.seconds)),
            ),
            (
                "service, sequential (1 in flight)",
                median_of(args.runs, lambda: rate(bench.sequential, args.seconds)),
            ),
            (
                "service, 64 in flight (group commit)",
                median_of(args.runs, lambda: rate(bench.concurrent, args.seconds)),
            ),
        ]
        threaded = [bench.threads(args.seconds, args.threads) for _ in range(args.runs)]
        print(f"\n== {label}: {bench.durability()}")
        print_rows(rows, rows[0][1][0], engine_rate)
        per_second = statistics.median(t[0] for t in threaded)
        p50 = statistics.median(t[1] for t in threaded)
        p99 = statistics.median(t[2] for t in threaded)
        print(
            f"{f'service, {args.threads} threads':40} {per_second:10.0f} "
            f"{per_second / rows[0][1][0]:10.2f} {per_second / engine_rate:10.3f}  "
            + " ".join(f"{t[0]:.0f}" for t in threaded)
        )
        print(
            f"  {args.threads} threads latency (median of runs): p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        )
        print(f"  writer: {bench.writer.units} units in {bench.writer.commits} commits")
    finally:
        bench.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("REMS_BENCH_POSTGRES_URL")
        or os.environ.get("REMS_TEST_POSTGRES_URL"),
        help="a PostgreSQL server's maintenance database; a fresh database is made there",
    )
    args = parser.parse_args()
    packs = PackLibrary()
    snapshot, request = engine_snapshot(packs)
    pack, ids = packs.get("clozapine-rems-2021"), RandomIds()

    def pure(n: int) -> None:
        for _ in range(n):
            decide(pack, request, snapshot, UTC, ids)

    engine_rate, engine_runs = median_of(args.runs, lambda: rate(pure, args.seconds))
    print(f"{args.runs} runs of ~{args.seconds}s each; Python {sys.version.split()[0]}")
    print(
        f"pure engine (decide): median {engine_rate:.0f}/s  runs "
        + " ".join(f"{v:.0f}" for v in engine_runs)
    )
    backends = [
        ("SQLite", None),
        *([("PostgreSQL", args.postgres_url)] if args.postgres_url else []),
    ]
    for label, base in backends:
        factory = DatabaseFactory(base)
        try:
            url = factory.fresh_url()
            bench_database(label, url, packs, args, engine_rate)
            factory.drop(url)
        finally:
            factory.close()


if __name__ == "__main__":
    main()
