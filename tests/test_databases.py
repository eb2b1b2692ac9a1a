"""The database factory of the tests and the scenario runner: fresh, migrated, separate databases,
and nothing left behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from gateway.scenarios.runner import DatabaseFactory
from rems_core.store.db import make_engine
from tests.conftest import BACKENDS, POSTGRES_URL


@pytest.fixture(params=BACKENDS)
def factory(request: pytest.FixtureRequest) -> Iterator[DatabaseFactory]:
    """A factory of its own (not the session's), so that closing it is safe to test."""
    made = DatabaseFactory(POSTGRES_URL if request.param == "postgresql" else None)
    yield made
    made.close()


def settings(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text("SELECT key FROM site_setting")).scalars())
    finally:
        engine.dispose()


def add_setting(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO site_setting (key, value) VALUES ('k', 'v')"))
    finally:
        engine.dispose()


def test_fresh_databases_are_migrated_and_separate(factory: DatabaseFactory) -> None:
    first, second = factory.fresh_url(), factory.fresh_url()
    assert first != second
    add_setting(first)
    assert settings(first) == ["k"] and settings(second) == []


def leftovers(url: str) -> list[str]:
    """What remains of the factory that made ``url``: its databases, or its template's."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        folder = Path(parsed.database or "").parent
        return [str(folder)] if folder.exists() else []
    tag = (parsed.database or "").removeprefix("rems_").rsplit("_", 1)[0]  # rems_<tag>_<n>
    admin = create_engine(POSTGRES_URL or "", poolclass=NullPool)  # the maintenance database
    try:
        with admin.connect() as conn:
            names = conn.execute(text("SELECT datname FROM pg_database")).scalars()
            return [n for n in names if n == f"rems_tpl_{tag}" or n.startswith(f"rems_{tag}_")]
    finally:
        admin.dispose()


def test_drop_and_close_leave_nothing_behind(factory: DatabaseFactory) -> None:
    kept, dropped = factory.fresh_url(), factory.fresh_url()
    factory.drop(dropped)
    assert settings(kept) == []
    engine = make_engine(kept)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))  # the pool keeps it open while the factory closes
    factory.close()
    engine.dispose()
    assert leftovers(kept) == []
