"""Decisions for one patient never interleave — across threads and across processes, on SQLite
and PostgreSQL (docs/rules.md §6.2 override limit, §6.4 one RDA per request id)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from gateway.app.audit_trail import verify_database
from gateway.app.errors import RequestConflict
from gateway.app.service import RemsService
from gateway.app.values import Source
from rems_core.model import Decision, Outcome
from rems_core.store import tables
from tests.builders import dispense
from tests.conftest import run
from tests.race_worker import OVERRIDE
from tests.test_service import MRN, count, registry

ROOT = Path(__file__).parent.parent
SOURCE = Source("race", "race-test")


def out_of_window(service: RemsService) -> None:
    """Enrolled 2022-01-01: on 2022-03-02 only the PSF window fails, so an override may help."""
    run(service.load_registry(registry(enrolled_on="2022-01-01"), SOURCE))


def in_threads(service: RemsService, requests: list[Any]) -> list[Decision | BaseException]:
    def decide(request: Any) -> Decision | BaseException:
        try:
            return asyncio.run(service.decide_dispense(MRN, request, SOURCE))
        except RequestConflict as exc:
            return exc

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(decide, requests))


def test_16_parallel_overrides_in_threads_authorize_exactly_3(
    service: RemsService, engine: Engine, db_url: str
) -> None:
    out_of_window(service)
    requests = [dispense("2022-03-02", override=OVERRIDE, request_id=f"t{i}") for i in range(16)]
    outcomes = [d.outcome for d in in_threads(service, requests)]  # type: ignore[union-attr]
    assert outcomes.count(Outcome.AUTHORIZED) == 3 and outcomes.count(Outcome.DENIED) == 13
    assert count(engine, tables.OverrideRow) == 3
    assert verify_database(db_url)[0] is None


def test_10_parallel_requests_with_one_request_id_issue_one_rda(
    service: RemsService, engine: Engine
) -> None:
    run(service.load_registry(registry(), SOURCE))
    decisions = in_threads(service, [dispense("2022-03-02", request_id="same") for _ in range(10)])
    numbers = {d.rda.number for d in decisions if isinstance(d, Decision) and d.rda}
    assert len(numbers) == 1 and all(isinstance(d, Decision) for d in decisions)
    assert count(engine, tables.RdaRow) == 1


def race(url: str, mode: str, per_process: int, tag: str) -> list[dict[str, Any]]:
    command = [sys.executable, "-m", "tests.race_worker", url, mode, str(per_process)]
    workers = [
        subprocess.Popen(
            [*command, f"{tag}{i}"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        for worker in workers:  # both have imported and assembled ...
            assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
        for worker in workers:  # ... before either starts: their requests overlap
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = []
        for worker in workers:
            output, _ = worker.communicate(timeout=120)
            assert worker.returncode == 0
            results += json.loads(output)
        return results
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def test_two_processes_with_16_overrides_authorize_exactly_3(
    service: RemsService, engine: Engine, db_url: str
) -> None:
    out_of_window(service)
    results = race(db_url, "overrides", 8, "p")
    assert [r["outcome"] for r in results].count("authorized") == 3
    assert count(engine, tables.OverrideRow) == 3
    assert verify_database(db_url)[0] is None  # both processes appended to one chain


def test_two_processes_with_one_request_id_issue_one_rda(
    service: RemsService, engine: Engine, db_url: str
) -> None:
    run(service.load_registry(registry(), SOURCE))
    results = race(db_url, "same-request", 5, "s")
    assert len({r["rda"] for r in results}) == 1 and None not in {r["rda"] for r in results}
    assert count(engine, tables.RdaRow) == 1


def test_one_request_id_with_another_body_is_a_conflict_and_issues_nothing(
    service: RemsService, engine: Engine, db_url: str
) -> None:
    run(service.load_registry(registry(), SOURCE))
    first = run(
        service.decide_dispense(MRN, dispense("2022-03-02", request_id="shared-request"), SOURCE)
    )
    results = race(db_url, "other-body", 5, "o")
    assert results == [{"error": "conflict"}] * 10
    assert first.rda is not None and count(engine, tables.RdaRow) == 1
