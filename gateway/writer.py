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
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from rems_core.store.registry_repo import RegistryCache
from rems_core.store.repo import Store

T = TypeVar("T")
Work = Callable[[Store], Any]

log = logging.getLogger("rems_gateway.writer")
_STOP = object()


class WriterStopped(RuntimeError):
    pass


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

    def start(self) -> None:
        self._thread.start()

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

    def submit(self, work: Callable[[Store], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:  # never queue behind the stop marker, or to a writer that died
            if not self.running:
                raise WriterStopped("the gateway's writer is not running")
            self._queue.put((work, future))
        return future

    def call(self, work: Callable[[Store], T]) -> T:
        """Run a unit of work and wait for its commit (for synchronous callers)."""
        return self.submit(work).result()

    async def run(self, work: Callable[[Store], T]) -> T:
        return await asyncio.wrap_future(self.submit(work))

    def _next_batch(self) -> tuple[list[tuple[Work, Future]], bool]:
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
                    conn = self._commit_batch(conn, live)
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
                item[1].set_exception(WriterStopped("the gateway's writer stopped"))

    def _commit_batch(
        self, conn: Connection | None, live: list[tuple[Work, Future]]
    ) -> Connection | None:
        """Apply and commit one batch, then answer its callers; returns the connection to keep.

        A connection the database dropped (a restart) is replaced and the batch tried once more:
        nothing of it was committed, so nothing is applied twice.
        """
        outcomes: list[tuple[Future, Any, BaseException | None]] | None = None
        failure: BaseException = WriterStopped("the writer stopped during this unit of work")
        try:
            for attempt in (1, 2):
                conn = conn if conn is not None else self._engine.connect()
                try:
                    outcomes = self._apply(conn, live)
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
                outcomes = [(future, None, failure) for _, future in live]
            for future, result, error in outcomes:
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)
        return conn

    def _apply(
        self, conn: Connection, live: list[tuple[Work, Future]]
    ) -> list[tuple[Future, Any, BaseException | None]]:
        """Every unit in one transaction, each atomic on its own, then one COMMIT.

        Units rarely fail, so none pays for a SAVEPOINT: when one raises, the transaction is
        rolled back and the batch run again without it (nothing was committed or answered yet,
        so the units before it simply run once more).
        """
        failed: dict[int, BaseException] = {}
        while True:
            store = Store(conn)
            with conn.begin() as transaction:
                store.lock_chain_head()  # one batch at a time across processes, in chain order
                if self._registry is not None and self._registry[0] == store.registry_version:
                    store.share_cache(self._registry[1])
                results, failure = self._run_units(store, live, failed)
                if failure is not None:
                    transaction.rollback()
                    failed[failure[0]] = failure[1]
                    continue
                if len(failed) == len(live):
                    transaction.rollback()
                    break
                version = store.registry_version + (1 if store.registry_changed else 0)
                store.flush_chain_head()
            self._registry = (version, store.cache())
            self.commits += 1
            self.units += len(live) - len(failed)
            break
        return [
            (future, None, failed[n]) if n in failed else (future, results[n], None)
            for n, (_, future) in enumerate(live)
        ]

    @staticmethod
    def _run_units(
        store: Store, live: list[tuple[Work, Future]], failed: dict[int, BaseException]
    ) -> tuple[dict[int, Any], tuple[int, BaseException] | None]:
        """Each unit not known to fail; the first that raises ends the attempt."""
        results: dict[int, Any] = {}
        for n, (work, _) in enumerate(live):
            if n in failed:
                continue
            try:
                results[n] = work(store)
            except Exception as exc:
                return results, (n, exc)
        return results, None
