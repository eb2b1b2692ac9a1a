"""Database engines and migrations: embedded SQLite by default, PostgreSQL by URL."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.pool import QueuePool

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
DEFAULT_URL = "sqlite:///rems-gateway.db"

# PostgreSQL pool: room for the writer, readiness probes and reads.
POOL_SIZE = 10
MAX_OVERFLOW = 10
DURABLE_COMMIT = "-c synchronous_commit=on"
# SQLite's own checkpoint, run by the COMMIT that grows the WAL past this many pages: with a
# WalCheckpointer beside the writer, only a bound on the WAL under constant load.
WAL_AUTOCHECKPOINT_PAGES = 10_000

log = logging.getLogger("rems_gateway.store")


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
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        # Take the write lock at BEGIN so that two writers never interleave (and never deadlock);
        # a read-only connection (audit verify) takes none and never holds the writers up.
        read_only = connection.get_execution_options().get("read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def has_wal(engine: Engine) -> bool:
    """A SQLite database in a file (in memory there is no WAL)."""
    return engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:")


class WalCheckpointer:
    """SQLite: copies the WAL into the database on a thread of its own, every ``interval``
    seconds, so that the writer's COMMITs only append to the WAL. (SQLite's automatic checkpoint
    runs inside a COMMIT and holds the writer, and every caller it answers, for the copy and its
    fsync.) A passive checkpoint never waits for the writer nor holds it up; the driver runs it
    without Python's interpreter lock, so it takes the machine's other core, not the writer's.

    Under constant load a checkpoint beside the writer never finds the whole WAL copied, and
    SQLite rewinds the WAL only after one that did: the writer's own checkpoint at
    ``WAL_AUTOCHECKPOINT_PAGES`` then does it, copying only what is left.
    """

    def __init__(self, engine: Engine, interval: float = 0.1) -> None:
        self._engine = engine
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rems-wal-checkpoint", daemon=True)
        self.checkpoints = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        # On the driver's connection, outside any transaction: a checkpoint cannot run in one
        # (and the engine's BEGIN would take the write lock).
        conn = self._engine.raw_connection()
        try:
            while not self._stop.wait(self._interval):
                conn.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").close()
                self.checkpoints += 1
        except Exception as exc:  # the writer's own checkpoints go on: nothing is lost
            log.warning("WAL checkpoints stopped: %s", type(exc).__name__)
        finally:
            conn.close()


def alembic_config(url: str) -> Config:
    from alembic.config import Config  # alembic costs ~0.3 s to import: only when migrating

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str = DEFAULT_URL, revision: str = "head") -> None:
    """Apply the migrations up to ``revision``."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)
