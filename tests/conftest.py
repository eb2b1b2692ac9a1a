"""Shared fixtures: a real, migrated database and the application service on it.

Every test that uses ``db_url`` (or ``engine``, ``writer``, ``service``) runs on SQLite and, when
REMS_TEST_POSTGRES_URL names a PostgreSQL server's maintenance database, on PostgreSQL too. Each
test gets a fresh database cloned from one template migrated once per session and backend.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine

from gateway.app.bootstrap import Gateway, assemble
from gateway.app.context import UnitContext
from gateway.app.reads import RemsReads
from gateway.app.service import RemsService
from gateway.app.writer import Writer
from gateway.scenarios.runner import DatabaseFactory
from rems_core.rulepack import PackLibrary
from rems_core.store.db import make_engine
from rems_core.store.repo import Store

PACKS = PackLibrary()
POSTGRES_URL = os.environ.get("REMS_TEST_POSTGRES_URL") or None
BACKENDS = ["sqlite", "postgresql"] if POSTGRES_URL else ["sqlite"]

# For a test that only means something on PostgreSQL: it runs there, and is skipped without it.
postgresql_only = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)

T = TypeVar("T")


@pytest.fixture(scope="session")
def sqlite_databases() -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory()
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def postgresql_databases() -> Iterator[DatabaseFactory]:
    if POSTGRES_URL is None:
        pytest.skip("REMS_TEST_POSTGRES_URL is not set")
    factory = DatabaseFactory(POSTGRES_URL)
    yield factory
    factory.close()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, migrated database of the backend named by the test id: [sqlite], [postgresql]."""
    factory: DatabaseFactory = request.getfixturevalue(f"{request.param}_databases")
    url = factory.fresh_url()
    yield url
    factory.drop(url)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def application(engine: Engine) -> Iterator[Gateway]:
    """The application as ``bootstrap`` wires it, on the test's engine, with the 2021 pack."""
    gateway = assemble(engine, UnitContext(PACKS, rules="clozapine-rems-2021"))
    yield gateway
    gateway.writer.stop()


@pytest.fixture
def writer(application: Gateway) -> Writer:
    return application.writer


@pytest.fixture
def service(application: Gateway) -> RemsService:
    return application.service


@pytest.fixture
def reads(application: Gateway) -> RemsReads:
    return application.reads


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def committed(service: RemsService, work: Callable[[Store], T]) -> T:
    """What the database holds now, read on a connection of the test's own."""
    with service.writer.engine.connect().execution_options(read_only=True) as conn:
        return work(Store(conn))
