"""One wiring of the application for everything that runs it: `serve`, the CLI, the scenario
runner, tests and benchmarks. The database engine, the single writer, the service (writes), the
reads beside it and the context the units of work get."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine

from gateway.app.context import UnitContext
from gateway.app.reads import RemsReads
from gateway.app.service import RemsService
from gateway.app.writer import Writer
from rems_core.store.db import make_engine


@dataclass(frozen=True)
class Gateway:
    engine: Engine
    writer: Writer
    service: RemsService
    reads: RemsReads
    ctx: UnitContext


def assemble(engine: Engine, ctx: UnitContext | None = None, *, max_batch: int = 128) -> Gateway:
    """The application on an engine the caller owns; its writer is started, and the caller
    stops it."""
    ctx = ctx or UnitContext()
    writer = Writer(engine, max_batch=max_batch)
    writer.start()
    return Gateway(engine, writer, RemsService(writer, ctx), RemsReads(engine, ctx), ctx)


@contextmanager
def bootstrap(db_url: str, ctx: UnitContext | None = None) -> Iterator[Gateway]:
    """The application on the (migrated) database at ``db_url``, for as long as the block runs;
    then the writer finishes its queue and the engine is closed."""
    engine = make_engine(db_url)
    try:
        gateway = assemble(engine, ctx)
        try:
            yield gateway
        finally:
            gateway.writer.stop()
    finally:
        engine.dispose()
