"""Database engines and migrations: embedded SQLite by default, PostgreSQL by URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.pool import QueuePool

MIGRATIONS = Path(__file__).parent / "migrations"
DEFAULT_URL = "sqlite:///rems-gateway.db"

# PostgreSQL pool: room for the writer, readiness probes and reads.
POOL_SIZE = 10
MAX_OVERFLOW = 10
DURABLE_COMMIT = "-c synchronous_commit=on"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str = DEFAULT_URL) -> Engine:
    """An engine whose commits are durable: SQLite in WAL with synchronous=FULL, PostgreSQL with
    synchronous_commit=on. Bound values (names, identifiers) never appear in its error messages."""
    if is_sqlite(url):
        engine = create_engine(url, connect_args={"check_same_thread": False}, hide_parameters=True)
        _sqlite_durable(engine)
        return engine
    return _postgres_engine(url)


def _postgres_engine(url: str) -> Engine:
    # pool_pre_ping: a connection the server dropped (restart, failover, pg_terminate_backend)
    # is noticed at checkout and replaced, instead of failing the unit of work that gets it.
    return create_engine(
        url,
        poolclass=QueuePool,
        pool_size=POOL_SIZE,
        max_overflow=MAX_OVERFLOW,
        pool_pre_ping=True,
        hide_parameters=True,
        connect_args={"options": _postgres_options(url)},
    )


def _postgres_options(url: str) -> str:
    """The URL's own ``options`` (if any) plus a durable commit for every connection."""
    given = make_url(url).query.get("options")
    given = " ".join(given) if isinstance(given, tuple) else given
    return f"{given} {DURABLE_COMMIT}" if given else DURABLE_COMMIT


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
        # Take the write lock at BEGIN so that two writers never interleave (and never deadlock);
        # a read-only connection (audit verify) takes none and never holds the writers up.
        read_only = connection.get_execution_options().get("read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str = DEFAULT_URL, revision: str = "head") -> None:
    """Apply the migrations up to ``revision``."""
    command.upgrade(alembic_config(url), revision)
