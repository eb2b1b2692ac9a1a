"""The single writer: every change goes through one thread, in arrival order, with group commit.

Each unit of work runs in its own SAVEPOINT (atomic on its own: a failing one rolls back alone),
several units share one COMMIT, and a caller is answered only after that COMMIT returned — so
nothing is acknowledged before it is durable, and decisions never interleave. Across processes,
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

from sqlalchemy import Engine

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
        try:
            stop = False
            while not stop:
                batch, stop = self._next_batch()
                if batch:
                    # A connection per batch from the pool: one broken by a database restart is
                    # replaced at the next checkout (pre-ping), and the writer goes on.
                    with self._engine.connect() as conn:
                        self._commit_batch(conn, batch)
        except BaseException as exc:  # the thread ends here; every caller is answered below
            log.critical("the writer stopped: %s", type(exc).__name__)
        finally:
            with self._lock:
                self._stopping = True
            self._fail_queued()

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and item[1].set_running_or_notify_cancel():
                item[1].set_exception(WriterStopped("the gateway's writer stopped"))

    def _commit_batch(self, conn: Any, batch: list[tuple[Work, Future]]) -> None:
        # A caller that gave up before its unit started is skipped; once started, a unit's
        # future can no longer be cancelled, so its answer always arrives.
        live = [(work, future) for work, future in batch if future.set_running_or_notify_cancel()]
        outcomes: list[tuple[Future, Any, BaseException | None]] = []
        store = Store(conn)
        failure: BaseException = WriterStopped("the writer stopped during this unit of work")
        committed = False
        try:
            with conn.begin():
                store.lock_chain_head()  # one batch at a time across processes, in chain order
                for work, future in live:
                    savepoint = conn.begin_nested()
                    try:
                        result = work(store)
                    except Exception as exc:
                        savepoint.rollback()
                        outcomes.append((future, None, exc))
                    else:
                        savepoint.commit()
                        outcomes.append((future, result, None))
            committed = True
            self.commits += 1
            self.units += len(live)
        except Exception as exc:  # the COMMIT itself failed: nothing of the batch is durable
            log.error("group commit of %d units failed: %s", len(live), type(exc).__name__)
            failure = exc
        finally:
            if not committed:
                outcomes = [(future, None, failure) for _, future in live]
            for future, result, error in outcomes:
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)
