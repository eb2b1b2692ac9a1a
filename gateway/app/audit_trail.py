"""`rems-gateway audit verify` and `audit checkpoint`: the audit chain checked end to end.

A checkpoint is the chain head written outside the database (a file the operator keeps
elsewhere), so that a truncation which also rewrote the head in the database is still found.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import inspect, make_url
from sqlalchemy.exc import ArgumentError

from rems_core.audit import ChainHead, Finding, verify
from rems_core.store.db import make_engine
from rems_core.store.repo import Store

#: The tables every rems-gateway database has (the audit chain and its head).
AUDIT_TABLES = frozenset({"audit_record", "audit_head"})


def read_checkpoint(path: Path) -> ChainHead:
    data = json.loads(path.read_text(encoding="utf-8"))
    return ChainHead(int(data["seq"]), str(data["hash"]))


class ChainBroken(ValueError):
    """No checkpoint of a chain that does not verify."""


def write_checkpoint(url: str, path: Path, previous: ChainHead | None = None) -> ChainHead:
    """Verify the chain (against the previous checkpoint, if any), then write its head."""
    problem, head = verify_database(url, previous)
    if problem is not None:
        raise ChainBroken(str(problem))
    written = {"seq": head.seq, "hash": head.hash, "written_at": datetime.now(UTC).isoformat()}
    path.write_text(json.dumps(written, indent=2) + "\n", encoding="utf-8")
    return head


def verify_database(
    url: str, checkpoint: ChainHead | None = None
) -> tuple[Finding | None, ChainHead]:
    """The first bad record (or None) and the head, read in one consistent snapshot."""
    engine = make_engine(url)
    try:
        # One snapshot for the head and every record, and no write lock held while reading.
        isolation = "REPEATABLE READ" if engine.dialect.name == "postgresql" else None
        options = {"read_only": True, **({"isolation_level": isolation} if isolation else {})}
        with engine.connect().execution_options(**options) as conn, conn.begin():
            store = Store(conn)
            head = store.chain_head()
            return verify(store.audit_records(), head, checkpoint), head
    finally:
        engine.dispose()


def gateway_database_problem(url: str) -> str | None:
    """Why ``url`` names no rems-gateway database (one line), or None. It creates nothing: an
    SQLite file is opened read-only, and only when it exists. A PostgreSQL server that does not
    answer raises the driver's error."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "--db is not a database URL (e.g. sqlite:///rems-gateway.db)"
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""
        if path in ("", ":memory:") or not Path(path).is_file():
            return (
                f"the database {path or shown} does not exist: give --db the gateway's own "
                "(its `serve --db`; the default sqlite:///rems-gateway.db is in the folder "
                "serve runs in)"
            )
        tables = _sqlite_tables(Path(path))
    else:
        engine = make_engine(url)
        try:
            tables = set(inspect(engine).get_table_names())
        finally:
            engine.dispose()
    if tables is None or not AUDIT_TABLES.issubset(tables):
        return (
            f"{shown} is not a rems-gateway database (it has no audit trail): give --db the "
            "gateway's own (its `serve --db`)"
        )
    return None


def _sqlite_tables(path: Path) -> set[str] | None:
    """The tables of an SQLite file, opened read-only; None when it is no SQLite database."""
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            return {str(name) for (name,) in rows}
        finally:
            connection.close()
    except sqlite3.DatabaseError:
        return None
