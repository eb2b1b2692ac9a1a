"""Decisions per second: the pure engine, and through the application service on SQLite with
durable commits (WAL, synchronous=FULL). Prints medians of several runs and ratios against
baselines measured in the same run.

    python bench/decide.py [--runs 5] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text

from gateway.service import RandomIds, RemsService, ServiceConfig, Source
from gateway.writer import Writer
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
from rems_core.store.db import make_engine, upgrade

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
    def __init__(self, folder: Path, packs: PackLibrary) -> None:
        url = f"sqlite:///{folder / 'bench.db'}"
        upgrade(url)
        self.engine = make_engine(url)
        self.writer = Writer(self.engine)
        self.writer.start()
        self.service = RemsService(self.writer, packs, ServiceConfig(), RandomIds())
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.service.load_registry(registry(), Source("bench")))
        self.request = DispenseRequest(PHARMACY, PRESCRIBER, Setting.OUTPATIENT, DAY, 30, "197536")
        self.i = 0

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    packs = PackLibrary()
    snapshot, request = engine_snapshot(packs)
    pack, ids = packs.get("clozapine-rems-2021"), RandomIds()

    def pure(n: int) -> None:
        for _ in range(n):
            decide(pack, request, snapshot, UTC, ids)

    with tempfile.TemporaryDirectory() as folder:
        bench = ServiceBench(Path(folder), packs)
        try:
            rows = [
                ("pure engine (decide)", median_of(args.runs, lambda: rate(pure, args.seconds))),
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
            commits, units = bench.writer.commits, bench.writer.units
        finally:
            bench.close()
    print(
        f"SQLite WAL, synchronous=FULL; {args.runs} runs of ~{args.seconds}s; "
        f"Python {sys.version.split()[0]}"
    )
    baseline = rows[1][1][0]
    engine_rate = rows[0][1][0]
    print(f"{'measure':40} {'median/s':>10} {'vs commit':>10} {'vs engine':>10}  runs")
    for name, (median, values) in rows:
        print(
            f"{name:40} {median:10.0f} {median / baseline:10.2f} {median / engine_rate:10.3f}  "
            + " ".join(f"{v:.0f}" for v in values)
        )
    print(f"writer: {units} units in {commits} commits ({units / max(commits, 1):.1f} per commit)")


if __name__ == "__main__":
    main()
