"""The single writer: answers only after the commit, survives callers that give up, never strands
a caller."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from gateway.app.service import RemsService
from gateway.app.writer import LOCK_BUCKETS, Writer, WriterStopped
from rems_core.store.db import make_engine, upgrade
from rems_core.store.repo import Store

_keys = iter(range(1_000_000))


def insert_setting(store: Store) -> int:
    store.conn.execute(
        text("INSERT INTO site_setting (key, value) VALUES (:k, 'x')"), {"k": f"k{next(_keys)}"}
    )
    return 1


@pytest.fixture
def gated_commit(engine: Engine) -> Iterator[threading.Event]:
    """COMMITs wait until the test opens the gate."""
    gate = threading.Event()

    def wait_for_gate(_conn: Any) -> None:
        gate.wait(10)

    event.listen(engine, "commit", wait_for_gate)
    yield gate
    gate.set()
    event.remove(engine, "commit", wait_for_gate)


def test_a_caller_is_answered_only_after_the_commit(
    engine: Engine, gated_commit: threading.Event
) -> None:
    writer = Writer(engine)
    writer.start()
    try:
        future = writer.submit(insert_setting)
        assert not future.done() and not future.cancelled()
        with pytest.raises(TimeoutError):
            future.result(timeout=0.3)  # the unit ran; its COMMIT is held at the gate
        gated_commit.set()
        assert future.result(timeout=5) == 1
    finally:
        gated_commit.set()
        writer.stop()


def test_a_second_gateways_writer_waits_for_the_chain_head_lock_and_both_are_timed(
    engine: Engine, db_url: str, gated_commit: threading.Event
) -> None:
    """Two writers on one database, as two gateways: while the first holds the chain head's row
    lock (its COMMIT held at the gate), the second's batch waits; /metrics reads these times."""
    first, other_engine = Writer(engine), make_engine(db_url)
    second = Writer(other_engine)
    first.start()
    second.start()
    try:
        holding = first.submit(insert_setting)
        time.sleep(0.3)  # the unit ran; the lock is held until the gate opens
        waiting = second.submit(insert_setting)
        time.sleep(0.3)
        assert not waiting.done()
        gated_commit.set()
        assert holding.result(timeout=5) == 1 and waiting.result(timeout=5) == 1
    finally:
        gated_commit.set()
        first.stop()
        second.stop()
        other_engine.dispose()
    assert sum(first.times.lock_hold.counts) == first.commits == 1
    assert first.times.lock_hold.total >= 0.55
    assert first.times.lock_hold.counts[LOCK_BUCKETS.index(1.0)] == 1  # in (0.5 s, 1 s]
    assert second.times.lock_wait.total >= 0.25 > first.times.lock_wait.total
    assert first.times.busy >= first.times.lock_hold.total
    assert 0 < first.times.cpu < first.times.busy  # waiting at the gate burns no CPU


def test_a_caller_that_gives_up_does_not_stop_the_writer(writer: Writer) -> None:
    async def impatient() -> None:
        task = asyncio.ensure_future(writer.run(insert_setting))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(impatient())
    assert writer.call(insert_setting) == 1
    assert writer.running


def test_callers_on_several_loops_in_one_batch_each_get_their_own_answer(
    engine: Engine, gated_commit: threading.Event
) -> None:
    """A batch's answers go to each caller's own event loop (one wake-up per loop)."""
    writer = Writer(engine)
    writer.start()
    answers: dict[int, list[int]] = {}

    def caller(loop_number: int) -> None:
        async def three() -> list[int]:
            units = [writer.run(lambda store, n=n: insert_setting(store) * n) for n in (1, 2, 3)]
            return list(await asyncio.gather(*units))

        answers[loop_number] = asyncio.run(three())

    try:
        threads = [threading.Thread(target=caller, args=(n,)) for n in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # all nine queued behind the held COMMIT: they share the next batch
        gated_commit.set()
        for thread in threads:
            thread.join(10)
        assert answers == {n: [1, 2, 3] for n in range(3)}
    finally:
        gated_commit.set()
        writer.stop()


def test_a_caller_whose_loop_is_gone_does_not_stop_the_writer(
    engine: Engine, gated_commit: threading.Event
) -> None:
    writer = Writer(engine)
    writer.start()
    try:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(
            asyncio.wait([loop.create_task(writer.run(insert_setting))], timeout=0.2)
        )
        loop.close()  # its answer arrives after the loop closed
        gated_commit.set()
        assert writer.call(insert_setting) == 1
        assert writer.running
    finally:
        gated_commit.set()
        writer.stop()


def test_work_after_stop_is_refused_not_stranded(engine: Engine) -> None:
    writer = Writer(engine)
    writer.start()
    writer.stop()
    with pytest.raises(WriterStopped):
        writer.submit(insert_setting)


def test_a_unit_that_raises_base_exception_fails_its_batch_and_the_writer_reports_it(
    engine: Engine,
) -> None:
    writer = Writer(engine)
    writer.start()

    def fatal(_store: Store) -> None:
        raise SystemExit(3)

    future = writer.submit(fatal)
    with pytest.raises(WriterStopped):
        future.result(timeout=5)
    writer._thread.join(5)
    assert not writer.running
    with pytest.raises(WriterStopped):
        writer.submit(insert_setting)


def test_a_failed_unit_takes_its_audit_records_with_it(writer: Writer, db_url: str) -> None:
    from datetime import UTC, datetime

    from gateway.app.audit_trail import verify_database
    from rems_core.audit import AuditEntry

    def entry(outcome: str) -> AuditEntry:
        now = datetime.now(UTC)
        return AuditEntry(now, now, "test", "test", "pytest", None, "0" * 64, "", outcome)

    def appends_then_fails(store: Store) -> None:
        store.append_audit(entry("rolled back"))
        raise RuntimeError("after its audit record")

    async def batch() -> list[object]:
        return await asyncio.gather(
            writer.run(lambda store: store.append_audit(entry("first"))),
            writer.run(appends_then_fails),
            writer.run(lambda store: store.append_audit(entry("second"))),
            return_exceptions=True,
        )

    first, failed, second = asyncio.run(batch())
    assert isinstance(failed, RuntimeError)
    assert (first.seq, second.seq) == (1, 2)  # type: ignore[union-attr]
    problem, head = verify_database(db_url)
    assert problem is None and head.seq == 2


def test_a_commit_whose_answer_is_lost_is_applied_once(
    service: RemsService, engine: Engine
) -> None:
    """The server commits, then the connection drops before the writer hears it (fault injection
    on the driver call): the writer reads the chain head anew and does not apply the batch twice."""
    from sqlalchemy import func, select

    from rems_core.store import tables
    from tests.builders import dispense
    from tests.conftest import run
    from tests.race_worker import OVERRIDE
    from tests.test_service import MRN, SOURCE, registry

    run(service.load_registry(registry(enrolled_on="2022-01-01"), SOURCE))
    dialect, armed = engine.dialect, {"now": True}
    real_commit = dialect.do_commit

    def commit_then_drop(dbapi_connection: Any) -> None:
        real_commit(dbapi_connection)
        if armed["now"]:
            armed["now"] = False
            raise dialect.loaded_dbapi.OperationalError("server closed the connection unexpectedly")

    def is_disconnect(context: Any) -> None:
        if "server closed the connection" in str(context.original_exception):
            context.is_disconnect = True

    dialect.do_commit = commit_then_drop  # type: ignore[method-assign]
    event.listen(engine, "handle_error", is_disconnect)
    try:
        decision = run(
            service.decide_dispense(MRN, dispense("2022-03-02", override=OVERRIDE), SOURCE)
        )
    finally:
        dialect.do_commit = real_commit  # type: ignore[method-assign]
        event.remove(engine, "handle_error", is_disconnect)
    assert decision.outcome.value == "authorized" and not armed["now"]
    with engine.connect() as conn:
        for table in (tables.DecisionRow, tables.OverrideRow):
            assert conn.execute(select(func.count()).select_from(table.__table__)).scalar_one() == 1


def test_wal_checkpoints_run_beside_the_writer(tmp_path: Path) -> None:
    """The WAL is copied into the database file by the checkpoint thread (SQLite's own checkpoint,
    in a COMMIT, waits for 10,000 pages); the thread ends with the writer."""
    url = f"sqlite:///{tmp_path / 'wal.db'}"
    upgrade(url)
    engine = make_engine(url)
    database = tmp_path / "wal.db"
    writer = Writer(engine)
    checkpointer = writer._checkpointer
    assert checkpointer is not None
    writer.start()
    try:
        raw = engine.raw_connection()  # outside a transaction, as a checkpoint must be
        raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        raw.close()
        before = database.read_bytes()  # a COMMIT in WAL mode writes only the -wal file
        for _ in range(50):
            writer.call(insert_setting)
        deadline = time.monotonic() + 10
        while database.read_bytes() == before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert database.read_bytes() != before
        assert checkpointer.checkpoints > 0
    finally:
        writer.stop()
        engine.dispose()
    assert not checkpointer._thread.is_alive()
