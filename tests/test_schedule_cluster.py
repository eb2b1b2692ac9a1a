"""docs/rules.md §8: scheduled work once per cluster — the scheduler lease in the store, and real
`serve` processes sharing one database: killed between due time and run, two on one PostgreSQL."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select, update

from gateway.app.service import SCHEDULER_LEASE, RemsService
from gateway.app.units import scheduled
from gateway.app.values import Source
from gateway.scheduler import FAILED, RAN, SKIPPED, MonitoringScheduler, Schedule
from rems_core.registry import RegistryDocument
from rems_core.store import tables
from rems_core.store.db import make_engine
from rems_core.store.repo import Store
from tests.conftest import postgresql_only, run
from tests.http_server import running_app
from tests.test_serve import Gateway, clean_environment, free_port, registry

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TTL = timedelta(seconds=60)
LEASE = "test-lease"
alert_t = tables.MonitoringAlert.__table__
audit_t = tables.AuditRecord.__table__
lease_t = tables.SchedulerLease.__table__


def take(engine: Engine, holder: str, now: datetime, ttl: timedelta = TTL) -> bool:
    with engine.begin() as conn:
        return Store(conn).take_lease(LEASE, holder, now, ttl)


def lease_row(engine: Engine, name: str = LEASE) -> dict[str, Any]:
    with engine.connect() as conn:
        lease = Store(conn).lease(name)
    assert lease is not None
    return lease


# --- the lease in the store (SQLite and PostgreSQL) ---------------------------------------------


def race(engine: Engine, holders: list[str], now: datetime) -> dict[str, bool]:
    """Each holder takes the lease on its own connection, all at once; each transaction stays
    open a moment after its statement, so the others' statements meet it uncommitted."""
    start = threading.Barrier(len(holders))
    won: dict[str, bool] = {}

    def one(holder: str) -> None:
        start.wait()
        with engine.begin() as conn:
            won[holder] = Store(conn).take_lease(LEASE, holder, now, TTL)
            time.sleep(0.2)

    threads = [threading.Thread(target=one, args=(holder,)) for holder in holders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return won


def test_of_processes_taking_a_free_lease_at_once_exactly_one_wins(engine: Engine) -> None:
    won = race(engine, [f"h{i}" for i in range(8)], T0)
    winners = [holder for holder, taken in won.items() if taken]
    assert len(won) == 8 and len(winners) == 1
    assert lease_row(engine)["holder"] == winners[0]


def test_of_processes_taking_an_expired_lease_at_once_exactly_one_wins(engine: Engine) -> None:
    assert take(engine, "dead", T0 - 2 * TTL)
    won = race(engine, [f"h{i}" for i in range(8)], T0)
    winners = [holder for holder, taken in won.items() if taken]
    assert len(winners) == 1
    row = lease_row(engine)
    assert (row["holder"], row["acquired"], row["expires"]) == (winners[0], T0, T0 + TTL)


def test_the_lease_is_another_holders_only_once_it_expired(engine: Engine) -> None:
    assert take(engine, "a", T0)
    assert not take(engine, "b", T0 + TTL - timedelta(seconds=1))
    assert take(engine, "b", T0 + TTL)
    assert not take(engine, "a", T0 + TTL + timedelta(seconds=1))
    assert lease_row(engine)["holder"] == "b"


def test_the_holder_renews_its_lease_and_keeps_when_it_took_it(engine: Engine) -> None:
    assert take(engine, "a", T0)
    assert take(engine, "a", T0 + timedelta(seconds=40))
    row = lease_row(engine)
    assert (row["acquired"], row["expires"]) == (T0, T0 + timedelta(seconds=100))
    assert not take(engine, "b", T0 + timedelta(seconds=99))


def test_a_released_lease_is_taken_at_once_and_the_last_run_stays(engine: Engine) -> None:
    assert take(engine, "a", T0)
    with engine.begin() as conn:
        Store(conn).record_run(LEASE, "a", T0)
        Store(conn).release_lease(LEASE, "b", T0)  # not b's: nothing happens
    assert not take(engine, "b", T0 + timedelta(seconds=1))
    with engine.begin() as conn:
        Store(conn).release_lease(LEASE, "a", T0 + timedelta(seconds=2))
    assert take(engine, "b", T0 + timedelta(seconds=2))
    row = lease_row(engine)
    assert (row["holder"], row["last_run"]) == ("b", T0)


# --- the service: the lease checked by every unit of the work -------------------------------------


def alerts(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(select(alert_t.c.patient_id, alert_t.c.code).order_by(alert_t.c.id))
        return [(row.patient_id, row.code) for row in rows]


def task_kinds(engine: Engine, patient: str) -> list[str]:
    task_t = tables.MonitoringTaskRow.__table__
    with engine.connect() as conn:
        query = select(task_t.c.kind).where(task_t.c.patient_id == patient)
        return [row.kind for row in conn.execute(query)]


def scheduled_actors(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        query = select(audit_t.c.actor).where(audit_t.c.kind == "scheduled")
        return list(conn.execute(query.order_by(audit_t.c.seq)).scalars())


def test_only_the_lease_holder_runs_the_work_and_records_it(
    service: RemsService, engine: Engine
) -> None:
    doc = RegistryDocument.model_validate(registry())
    patient = run(service.load_registry(doc, Source("test")))["P1"]
    now = datetime.now(UTC)
    found = run(service.run_scheduled_as("a", now, TTL))
    assert found is not None and {f.code for f in found[patient]} == {"LABS_MISSED", "ANC_OVERDUE"}
    assert run(service.run_scheduled_as("b", now + timedelta(seconds=1), TTL)) is None
    assert run(service.run_scheduled_as("a", now + timedelta(seconds=2), TTL)) is not None
    assert sorted(alerts(engine)) == [(patient, "ANC_OVERDUE"), (patient, "LABS_MISSED")]
    assert scheduled_actors(engine) == ["a"]
    row = lease_row(engine, SCHEDULER_LEASE)
    assert (row["holder"], row["last_run"]) == ("a", now + timedelta(seconds=2))


def many_patients(count: int) -> RegistryDocument:
    doc = registry()
    one = doc["patients"][0]
    doc["patients"] = [
        {**one, "id": f"P{k}", "identifiers": [{**one["identifiers"][0], "value": f"M{k:04d}"}]}
        for k in range(count)
    ]
    return RegistryDocument.model_validate(doc)


def test_the_work_runs_in_units_of_a_few_dozen_patients_each(
    service: RemsService, engine: Engine
) -> None:
    """Other units of work get in between: a registry of 120 is the housekeeping, three units of
    patients and the record of the run — and it finds what one unit for all of them finds."""
    ids = run(service.load_registry(many_patients(120), Source("test")))
    now, units = datetime.now(UTC), service.writer.units
    found = run(service.run_scheduled_as("a", now, TTL))
    assert service.writer.units - units == 1 + 3 + 1
    assert found is not None and set(found) == set(ids.values())
    assert all({f.code for f in found[p]} == {"LABS_MISSED", "ANC_OVERDUE"} for p in found)
    assert lease_row(engine, SCHEDULER_LEASE)["last_run"] == now


def test_a_holder_whose_lease_went_to_another_gateway_midway_stops_and_records_no_run(
    service: RemsService, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(service.load_registry(many_patients(120), Source("test")))
    done = scheduled.monitoring_alerts
    calls: list[int] = []

    def then_taken_over(ctx: Any, store: Store, *args: Any) -> Any:
        found = done(ctx, store, *args)
        calls.append(len(found))
        store.conn.execute(  # as if the lease ran out and gateway b took it meanwhile
            update(lease_t)
            .where(lease_t.c.name == SCHEDULER_LEASE)
            .values(holder="b", expires=datetime.now(UTC) + timedelta(hours=1))
        )
        return found

    monkeypatch.setattr(scheduled, "monitoring_alerts", then_taken_over)
    assert run(service.run_scheduled_as("a", datetime.now(UTC), TTL)) is None
    assert calls == [50]  # the first 50 patients' work is kept; a stopped at the next unit
    row = lease_row(engine, SCHEDULER_LEASE)
    assert (row["holder"], row["last_run"]) == ("b", None)


def test_admin_scheduler_shows_the_lease_holder_and_the_last_run(
    service: RemsService, engine: Engine
) -> None:
    with running_app(service, engine) as url:
        assert httpx.get(f"{url}/admin/scheduler").json() == {"lease": None}
        now = datetime.now(UTC)
        assert run(service.run_scheduled_as("a", now, TTL)) is not None
        shown = httpx.get(f"{url}/admin/scheduler").json()["lease"]
    assert shown.pop("holder") == "a"
    times = {key: datetime.fromisoformat(value) for key, value in shown.items()}
    assert times == {"acquired": now, "expires": now + TTL, "last_run": now}


# --- the scheduler's ticks (in process) ---------------------------------------------------------


def test_a_tick_comes_every_third_of_the_lease_or_every_interval_if_shorter() -> None:
    assert Schedule(timedelta(minutes=15), timedelta(seconds=60)).tick == timedelta(seconds=20)
    assert Schedule(timedelta(seconds=1), timedelta(seconds=3)).tick == timedelta(seconds=1)


def test_the_holder_renews_between_runs_the_other_idles_until_the_lease_is_released(
    service: RemsService,
) -> None:
    ticks: list[tuple[str, str | None, bool]] = []
    schedule = Schedule(every=timedelta(hours=1), lease=TTL)
    a = MonitoringScheduler(service, schedule, lambda r, h: ticks.append(("a", r, h)))
    b = MonitoringScheduler(service, schedule, lambda r, h: ticks.append(("b", r, h)))

    async def scenario() -> None:
        await a.tick()  # takes the lease and runs the work
        await a.tick()  # within the hour: renews only
        await b.tick()
        await a.stop()  # releases the lease
        await b.tick()  # takes it at once, and runs

    run(scenario())
    assert ticks == [
        ("a", RAN, True),
        ("a", None, True),
        ("b", SKIPPED, False),
        ("a", None, False),
        ("b", RAN, True),
    ]


def test_failed_work_is_tried_again_an_interval_later_not_at_every_tick(
    service: RemsService, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticks: list[tuple[str | None, bool]] = []
    scheduler = MonitoringScheduler(
        service, Schedule(timedelta(hours=1), TTL), lambda r, h: ticks.append((r, h))
    )

    def broken(*_args: Any) -> None:
        raise RuntimeError("the work failed")

    monkeypatch.setattr(scheduled, "housekeeping", broken)

    async def two_ticks() -> None:
        await scheduler.tick()  # the lease taken with the housekeeping is rolled back with it
        await scheduler.tick()  # within the hour: takes the lease only

    run(two_ticks())
    assert ticks == [(FAILED, False), (None, True)]


# --- real `serve` processes -------------------------------------------------------------------


def serve(folder: Path, db_url: str, every: int, lease: int) -> Gateway:
    """A ready `serve` on ``db_url`` running the work every ``every`` seconds, the scheduler lease
    living ``lease`` seconds."""
    flags = ["--db", db_url, "--port", str(port := free_port()), "--mllp-port", str(free_port())]
    flags += ["--schedule-every-seconds", str(every), "--schedule-lease-seconds", str(lease)]
    gateway = Gateway(folder, port, flags, clean_environment())
    gateway.wait_ready()
    return gateway


@contextmanager
def serving(
    tmp_path: Path, db_url: str, every: int, lease: int, count: int
) -> Iterator[list[Gateway]]:
    """``count`` gateways on one database, each with its own folder and log; killed at the end."""
    gateways: list[Gateway] = []
    try:
        for i in range(count):
            folder = tmp_path / f"gateway-{i}"
            folder.mkdir(exist_ok=True)
            gateways.append(serve(folder, db_url, every, lease))
        yield gateways
    finally:
        for gateway in gateways:
            gateway.process.kill()
            gateway.process.wait()


def runs(gateway: Gateway, result: str) -> float:
    text = gateway.http.get("/metrics").text
    found = re.search(rf'^rems_scheduled_runs_total\{{result="{result}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def holds_lease(gateway: Gateway) -> bool:
    text = gateway.http.get("/metrics").text
    return re.search(r"^rems_scheduler_lease_held 1\.0$", text, re.M) is not None


def holder(gateway: Gateway) -> str:
    lines = [json.loads(line) for line in gateway.output().splitlines() if line.startswith("{")]
    return next(line["holder"] for line in lines if line["msg"] == "scheduler started")


def scheduler_lease(gateway: Gateway) -> dict[str, Any]:
    response = gateway.http.get("/admin/scheduler")
    assert response.status_code == 200, response.text
    return dict(response.json()["lease"])


def eventually(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds} s: {what}")
        time.sleep(0.2)


def load_overdue_patient(gateway: Gateway) -> str:
    """A patient whose newest ANC is years old: LABS_MISSED and ANC_OVERDUE are due now."""
    response = gateway.http.post("/admin/registry", json=registry())
    assert response.status_code == 200, response.text
    return str(response.json()["patient_ids"]["P1"])


def ran_once(engine: Engine, patient: str) -> list[str]:
    """The job's effect is there exactly once; answers the actors of its audit records."""
    assert sorted(alerts(engine)) == [(patient, "ANC_OVERDUE"), (patient, "LABS_MISSED")]
    kinds = task_kinds(engine, patient)  # the worklist's tasks, each occurrence opened once
    assert kinds.count("anc-overdue") == 1 and kinds.count("labs-missed") == 1
    assert len(kinds) == len(set(kinds))
    actors = scheduled_actors(engine)
    assert len(actors) == 1
    return actors


@pytest.fixture
def db_engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.mark.slow
def test_a_gateway_killed_between_due_time_and_run_runs_the_job_once_after_restart(
    tmp_path: Path, db_url: str, db_engine: Engine
) -> None:
    hour = 3600  # the work runs at start-up only; the lease is renewed every second
    with serving(tmp_path, db_url, every=hour, lease=3, count=1) as (first,):
        eventually(lambda: runs(first, "ran") == 1, 10, "the start-up run")
        patient = load_overdue_patient(first)  # due now; the next run is an hour away
        renewed_after = datetime.now(UTC) + timedelta(seconds=3)  # the lease lives 3 s

        def renewed() -> bool:
            return lease_row(db_engine, SCHEDULER_LEASE)["expires"] > renewed_after

        eventually(renewed, 10, "a tick after the job fell due")  # which did not run it
        assert alerts(db_engine) == []
        first.process.kill()  # SIGKILL: the lease is not released
        first.process.wait()
    with serving(tmp_path, db_url, every=hour, lease=3, count=1) as (second,):
        eventually(lambda: runs(second, "ran") == 1, 15, "the catch-up run, once the lease ran out")
        assert ran_once(db_engine, patient) == [holder(second)]
        again = second.http.post("/admin/scheduled-work", json={"patients": [patient]})
        assert again.status_code == 200, again.text
        ran_once(db_engine, patient)
        assert second.terminate() == 0  # a clean shutdown releases the lease
    released = lease_row(db_engine, SCHEDULER_LEASE)
    assert released["holder"] == holder(second) and released["expires"] <= datetime.now(UTC)
    with serving(tmp_path, db_url, every=hour, lease=3, count=1) as (third,):
        eventually(lambda: runs(third, "ran") == 1, 10, "the start-up run")
        ran_once(db_engine, patient)


@pytest.mark.slow
@postgresql_only
def test_two_gateways_on_one_postgresql_never_both_run_the_work(
    tmp_path: Path, db_url: str, db_engine: Engine
) -> None:
    with serving(tmp_path, db_url, every=1, lease=6, count=2) as gateways:
        patient = load_overdue_patient(gateways[1])

        def ticked() -> bool:  # the work ran four times, and each gateway ticked three times
            counts = [(runs(g, "ran"), runs(g, "skipped_not_leader")) for g in gateways]
            return sum(ran for ran, _ in counts) >= 4 and min(sum(c) for c in counts) >= 3

        eventually(ticked, 20, "four runs and three ticks of each gateway")
        leaders = [g for g in gateways if runs(g, "ran") > 0]
        assert len(leaders) == 1
        (leader,) = leaders
        (other,) = [g for g in gateways if g is not leader]
        assert runs(other, "skipped_not_leader") >= 3 and not holds_lease(other)
        assert holds_lease(leader)
        assert ran_once(db_engine, patient) == [holder(leader)]
        lease = scheduler_lease(other)  # any gateway shows who holds it
        assert lease["holder"] == holder(leader) and lease["last_run"] is not None

        leader.process.kill()  # the holder dies: the other takes over once its lease ran out
        leader.process.wait()
        eventually(lambda: runs(other, "ran") >= 2, 15, "the other gateway took over")
        assert holds_lease(other)
        assert scheduler_lease(other)["holder"] == holder(other)
        ran_once(db_engine, patient)
