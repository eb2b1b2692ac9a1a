"""The single writer: every change goes through one thread, in arrival order, with group commit.

Each unit of work is atomic on its own (a failing one leaves no trace: the batch is rolled back
and run again without it), several units share one COMMIT, and a caller is answered only after
that COMMIT returned — so nothing is acknowledged before it is durable, and decisions never
interleave. Across processes,
each batch first takes the audit chain head's row lock (SQLite: BEGIN IMMEDIATE takes the whole
database), so batches of all writers apply one after another and the chain stays one chain.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from rems_core.audit import ChainHead
from rems_core.store.db import WalCheckpointer, has_wal
from rems_core.store.registry_repo import RegistryCache
from rems_core.store.repo import Store

T = TypeVar("T")
Work = Callable[[Store], Any]


class _LoopReply:
    """The answer to a caller awaiting on an event loop: set on that loop, together with the
    batch's other answers for it (one wake-up of the loop per batch, not one per unit)."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()

    def set_running_or_notify_cancel(self) -> bool:
        return not self.future.cancelled()  # a caller that gave up: its unit is skipped


Reply = Future | _LoopReply
Outcome = tuple[Reply, Any, BaseException | None]

log = logging.getLogger("rems_gateway.writer")
_STOP = object()


class WriterStopped(RuntimeError):
    pass


#: Upper bounds (seconds) of the chain-head lock histograms: a batch holds it for a few
#: milliseconds; waits are long only when another gateway's batch holds it.
LOCK_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LockTimes:
    """A histogram of one duration per batch (prometheus-style cumulative on export)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LOCK_BUCKETS) + 1)  # the last one: above every bound
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LOCK_BUCKETS, seconds)] += 1
        self.total += seconds


class WriterTimes:
    """Where the writer's time goes, for /metrics and the benchmarks: how busy it is, the CPU
    it burns (its own thread's), and how long each batch waits for and holds the chain head's
    row lock — across gateways on one database, the hold time is what every batch queues on."""

    def __init__(self) -> None:
        self.busy = 0.0
        self.cpu = 0.0
        self.lock_wait = LockTimes()
        self.lock_hold = LockTimes()


class Writer:
    def __init__(self, engine: Engine, max_batch: int = 128) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="rems-writer", daemon=True)
        self._stopping = False
        self._lock = threading.Lock()
        # Registry reads kept between batches while the registry version is unchanged.
        self._registry: tuple[int, RegistryCache] | None = None
        self.commits = 0
        self.units = 0
        self.times = WriterTimes()
        self._locked_at: float | None = None  # when this batch got the chain head's lock
        # Called (on the writer's thread) after a commit that queued notifications.
        self.on_notified: list[Callable[[], None]] = []
        self._checkpointer = WalCheckpointer(engine) if has_wal(engine) else None

    def start(self) -> None:
        self._thread.start()
        if self._checkpointer is not None:
            self._checkpointer.start()

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def stop(self) -> None:
        """Finish every queued unit of work, then stop."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join()
        self._fail_queued()
        if self._checkpointer is not None:
            self._checkpointer.stop()

    def submit(self, work: Callable[[Store], T]) -> Future[T]:
        future: Future[T] = Future()
        self._put(work, future)
        return future

    def _put(self, work: Work, reply: Reply) -> None:
        with self._lock:  # never queue behind the stop marker, or to a writer that died
            if not self.running:
                raise WriterStopped("the gateway's writer is not running")
            self._queue.put((work, reply))

    def call(self, work: Callable[[Store], T]) -> T:
        """Run a unit of work and wait for its commit (for synchronous callers)."""
        return self.submit(work).result()

    async def run(self, work: Callable[[Store], T]) -> T:
        reply = _LoopReply(asyncio.get_running_loop())
        self._put(work, reply)
        return await reply.future  # type: ignore[no-any-return]

    def _next_batch(self) -> tuple[list[tuple[Work, Reply]], bool]:
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        while len(batch) < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        conn: Connection | None = None
        try:
            stop = False
            while not stop:
                batch, stop = self._next_batch()
                # A caller that gave up before its unit started is skipped; once started, a
                # unit's future can no longer be cancelled, so its answer always arrives.
                live = [
                    (work, future)
                    for work, future in batch
                    if future.set_running_or_notify_cancel()
                ]
                if live:
                    started, cpu = time.perf_counter(), time.thread_time()
                    conn = self._commit_batch(conn, live)
                    self.times.busy += time.perf_counter() - started
                    self.times.cpu += time.thread_time() - cpu
        except BaseException as exc:  # the thread ends here; every caller is answered below
            log.critical("the writer stopped: %s", type(exc).__name__)
        finally:
            with self._lock:
                self._stopping = True
            self._fail_queued()
            if conn is not None:
                conn.close()

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and item[1].set_running_or_notify_cancel():
                _answer([(item[1], None, WriterStopped("the gateway's writer stopped"))])

    def _commit_batch(
        self, conn: Connection | None, live: list[tuple[Work, Reply]]
    ) -> Connection | None:
        """Apply and commit one batch, then answer its callers; returns the connection to keep.

        A connection the database dropped before the COMMIT (a restart) is replaced and the batch
        tried once more: nothing of it was committed. A drop during the COMMIT is settled by
        reading the chain head on a new connection: moved as this batch moved it → committed.
        """
        outcomes: list[Outcome] | None = None
        failure: BaseException = WriterStopped("the writer stopped during this unit of work")
        try:
            for attempt in (1, 2):
                conn = conn if conn is not None else self._engine.connect()
                try:
                    outcomes = self._apply(conn, live)
                    break
                except CommitUncertain as uncertain:
                    conn.close()
                    conn = self._engine.connect()
                    outcomes = self._settle(conn, uncertain)
                    break
                except DBAPIError as exc:
                    conn.close()
                    conn = None
                    if not exc.connection_invalidated or attempt == 2:
                        raise
                    log.warning("database connection lost; reconnecting")
        except Exception as exc:  # nothing of the batch is durable
            log.error("group commit of %d units failed: %s", len(live), type(exc).__name__)
            failure = exc
            if conn is not None:
                conn.close()
                conn = None
        finally:
            if outcomes is None:
                outcomes = [(reply, None, failure) for _, reply in live]
            _answer(outcomes)
        return conn

    def _settle(self, conn: Connection, uncertain: CommitUncertain) -> list[Outcome] | None:
        with conn.begin():
            head = Store(conn).chain_head()
        if uncertain.moved and head == uncertain.head:
            log.warning("the COMMIT's answer was lost, but the batch is committed")
            self.commits += 1
            return uncertain.outcomes
        raise uncertain.cause

    def _apply(self, conn: Connection, live: list[tuple[Work, Reply]]) -> list[Outcome]:
        """Every unit in one transaction, then one COMMIT. Units rarely fail, so the first
        attempt pays for no SAVEPOINT and sends some rows once per batch; if anything fails, the
        batch is rolled back and run once more with each unit in its own SAVEPOINT (nothing was
        committed or answered yet, so the units simply run again)."""
        outcomes = self._attempt(conn, live, careful=False)
        if outcomes is None:
            outcomes = self._attempt(conn, live, careful=True)
        assert outcomes is not None
        return outcomes

    def _attempt(
        self, conn: Connection, live: list[tuple[Work, Reply]], careful: bool
    ) -> list[Outcome] | None:
        self._locked_at = None
        try:
            return self._transaction(conn, live, careful)
        finally:  # committed, rolled back or failed: the chain head's lock is released
            if self._locked_at is not None:
                self.times.lock_hold.observe(time.perf_counter() - self._locked_at)

    def _transaction(
        self, conn: Connection, live: list[tuple[Work, Reply]], careful: bool
    ) -> list[Outcome] | None:
        store = Store(conn, defer=not careful)
        asked = time.perf_counter()
        transaction = conn.begin()  # SQLite: BEGIN IMMEDIATE, the database's write lock
        try:
            before = store.lock_chain_head()  # one batch at a time across processes, in order
            self._locked_at = time.perf_counter()
            self.times.lock_wait.observe(self._locked_at - asked)
            if self._registry is not None and self._registry[0] == store.registry_version:
                store.share_cache(self._registry[1])
            outcomes = [self._unit(conn, store, work, future, careful) for work, future in live]
            if all(error is not None for _, _, error in outcomes):
                transaction.rollback()
                return outcomes
            version = store.registry_version + (1 if store.registry_changed else 0)
            store.flush_chain_head()
        except _UnitFailed:
            transaction.rollback()
            return None
        except DBAPIError as exc:
            transaction.rollback()
            if careful or exc.connection_invalidated:
                raise
            return None  # e.g. a deferred row: the careful attempt finds whose
        except BaseException:
            transaction.rollback()
            raise
        try:
            transaction.commit()
        except DBAPIError as exc:
            raise CommitUncertain(store.head, store.head != before, outcomes, exc) from exc
        self._registry = (version, store.cache())
        self.commits += 1
        self.units += sum(1 for _, _, error in outcomes if error is None)
        if store.notified:
            for wake in self.on_notified:
                wake()
        return outcomes

    @staticmethod
    def _unit(conn: Connection, store: Store, work: Work, future: Reply, careful: bool) -> Outcome:
        if not careful:
            try:
                return future, work(store), None
            except Exception as exc:
                raise _UnitFailed from exc
        savepoint, head = conn.begin_nested(), store.head
        try:
            result = work(store)
        except Exception as exc:
            savepoint.rollback()
            store.head = head  # its audit records are gone with it
            store.forget_cached()
            return future, None, exc
        savepoint.commit()
        return future, result, None


def _answer(outcomes: list[Outcome]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for outcome in outcomes:
        reply, result, error = outcome
        if isinstance(reply, _LoopReply):
            by_loop.setdefault(reply.loop, []).append(outcome)
        elif error is None:
            reply.set_result(result)
        else:
            reply.set_exception(error)
    for loop, answers in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these any more
            loop.call_soon_threadsafe(_settle, answers)


def _settle(answers: list[Outcome]) -> None:
    """On the callers' loop."""
    for reply, result, error in answers:
        future = cast(_LoopReply, reply).future
        if future.done():  # cancelled by its caller meanwhile
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


class _UnitFailed(Exception):
    """A unit raised in a batch run without SAVEPOINTs: run the batch again, carefully."""


class CommitUncertain(Exception):
    """The connection failed during COMMIT: the batch may or may not be committed."""

    def __init__(
        self, head: ChainHead | None, moved: bool, outcomes: list[Outcome], cause: DBAPIError
    ) -> None:
        super().__init__(str(cause))
        self.head, self.moved, self.outcomes, self.cause = head, moved, outcomes, cause


RETRY_AFTER_SECONDS = 5  # a restart or failover of the database usually takes a few seconds


def store_unavailable(exc: Exception) -> bool:
    """A database error that says the store cannot be reached or used now, not that the
    request's content is wrong."""
    if isinstance(exc, (WriterStopped, PoolTimeout, OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated
