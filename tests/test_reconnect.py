"""PostgreSQL drops the gateway's connections (restart, failover, an administrator): the pool
replaces them at the next checkout, the writer goes on, and the next unit of work succeeds."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from gateway.app.service import RemsService
from gateway.app.writer import Writer
from rems_core.model import Outcome
from rems_core.store.repo import Store
from tests.builders import dispense
from tests.conftest import postgresql_only, run
from tests.test_service import MRN, SOURCE, registry

pytestmark = postgresql_only

_TERMINATE_OTHERS = text(
    "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


def terminate_other_backends(db_url: str) -> int:
    """What a database restart does to the gateway: every other session of the database ends.
    Waits until they are gone (PostgreSQL 14+)."""
    admin = create_engine(db_url, poolclass=NullPool)
    try:
        with admin.connect() as conn:
            return conn.execute(_TERMINATE_OTHERS).scalar_one()
    finally:
        admin.dispose()


def answers(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT 1")).scalar_one()


def test_a_pooled_connection_the_server_dropped_is_replaced_at_checkout(
    engine: Engine, db_url: str
) -> None:
    assert answers(engine) == 1  # leaves one connection idle in the pool
    assert terminate_other_backends(db_url) >= 1
    assert answers(engine) == 1


def test_the_next_call_after_the_database_dropped_every_connection_succeeds(
    service: RemsService, db_url: str
) -> None:
    run(service.load_registry(registry(), SOURCE))
    first = run(service.decide_dispense(MRN, dispense("2022-03-02"), SOURCE))
    assert terminate_other_backends(db_url) >= 1
    second = run(service.decide_dispense(MRN, dispense("2022-03-03"), SOURCE))
    assert first.outcome == second.outcome == Outcome.AUTHORIZED
    assert service.writer.running


def kill_own_connection(store: Store) -> None:
    store.conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))


def test_a_unit_whose_connection_dies_fails_and_the_writer_goes_on(
    service: RemsService, writer: Writer
) -> None:
    run(service.load_registry(registry(), SOURCE))
    with pytest.raises(SQLAlchemyError):  # the unit's own failure, not WriterStopped
        writer.call(kill_own_connection)
    assert writer.running
    decision = run(service.decide_dispense(MRN, dispense("2022-03-02"), SOURCE))
    assert decision.outcome == Outcome.AUTHORIZED
