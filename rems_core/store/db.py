"""Database engines and migrations: embedded SQLite by default, PostgreSQL by URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event

MIGRATIONS = Path(__file__).parent / "migrations"
DEFAULT_URL = "sqlite:///rems-gateway.db"


def make_engine(url: str = DEFAULT_URL) -> Engine:
    """An engine whose commits are durable: SQLite in WAL with synchronous=FULL. Bound values
    (names, identifiers) never appear in its error messages."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False}, hide_parameters=True)
        _sqlite_durable(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, hide_parameters=True)


def _sqlite_durable(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's BEGIN below decide transactions, not the driver.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        # Take the write lock at BEGIN so that two writers never interleave (and never deadlock).
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str = DEFAULT_URL, revision: str = "head") -> None:
    """Apply the migrations up to ``revision``."""
    command.upgrade(alembic_config(url), revision)
