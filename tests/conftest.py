"""Shared fixtures: a real, migrated database and the application service on it.

Every test that uses ``db_url`` (or ``engine``, ``writer``, ``service``) runs on SQLite and, when
REMS_TEST_POSTGRES_URL names a PostgreSQL server's maintenance database, on PostgreSQL too. Each
test gets a fresh database cloned from one template migrated once per session and backend.

Which tests run on both backends: those whose subject is storage — the store and its repo, the
writer, migrations, races, the audit chain, the scheduler lease, the durable queues, recovery
after kill -9, and every mapping that stores what it reads. A test whose subject is not the
database — HTTP edge behaviour, authentication, parsing, error texts, a channel's transport —
proves nothing more on PostgreSQL than on SQLite, and is marked ``@sqlite_only`` (a test, a class,
or a whole module by ``pytestmark``): ``pytest_generate_tests`` below turns the mark into a
``parametrize`` of ``db_url`` with SQLite alone, so the test keeps its ``[sqlite]`` id, and a marked
test that uses no database is left as it is. ``@postgresql_only`` is the opposite: a test that
only means something on PostgreSQL.
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
# For a test whose subject is not the database: it runs on SQLite alone (see the docstring).
sqlite_only = pytest.mark.sqlite_only

T = TypeVar("T")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only: the test's subject is not the database; db_url is SQLite alone"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``@sqlite_only``: db_url parametrized with SQLite alone, before pytest applies the
    fixture's own params (it leaves a fixture alone that a ``parametrize`` mark names). A test's
    own parametrize of db_url (``@postgresql_only``) outranks a class's or module's mark."""
    definition = metafunc.definition
    if "db_url" not in metafunc.fixturenames or not definition.get_closest_marker("sqlite_only"):
        return
    if any("db_url" in _argnames(m) for m in definition.iter_markers("parametrize")):
        return
    definition.add_marker(pytest.mark.parametrize("db_url", ["sqlite"], indirect=True))


def _argnames(parametrize: pytest.Mark) -> list[str]:
    names = parametrize.args[0] if parametrize.args else parametrize.kwargs["argnames"]
    return [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)


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
