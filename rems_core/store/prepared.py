"""Statements compiled once per dialect, for the hot path (lab messages, audit).

``Connection.execute`` of a Core statement spends most of its time on per-call work (cache key,
parameter coercion, execution context set-up, result metadata): about 110 µs for one observation
row on SQLite. Here the SQL is compiled once, values are converted by the columns' own bind
processors, and the statement runs on the driver's cursor inside the connection's transaction
(``exec_driver_sql`` alone still costs ~12 µs a call, the driver ~1 µs). Rows read back go
through the columns' own result processors, so they hold what a Core SELECT gives (aware UTC
times, decoded JSON, booleans). A driver error is handled by the connection as its own execute
would handle it: wrapped in SQLAlchemy's ``DBAPIError`` (``IntegrityError`` …), a lost connection
invalidated (the writer's reconnect and retry rely on that).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, Connection, Executable, Insert
from sqlalchemy.engine.interfaces import Dialect


@dataclass(frozen=True)
class _Compiled:
    sql: str
    positions: tuple[str, ...] | None  # parameter order for positional paramstyles
    processors: dict[str, Callable[[Any], Any]]
    defaults: dict[str, Any]  # values the statement carries itself (literals, LIMIT)
    converted: tuple[tuple[int, Callable[[Any], Any]], ...]  # positional: which, and how

    @classmethod
    def of(cls, statement: Any, dialect: Dialect, keys: Sequence[str] | None = None) -> _Compiled:
        compiled = statement.compile(
            dialect=dialect, column_keys=list(keys) if keys is not None else None
        )
        positions = tuple(compiled.positiontup) if compiled.positiontup is not None else None
        defaults = {
            name: bind.effective_value
            for bind, name in compiled.bind_names.items()
            if not bind.required
        }
        processors = {
            name: _sqlite_json(process)
            if _is_sqlite_json(compiled.binds[name], dialect)
            else process
            for name, process in compiled._bind_processors.items()
        }
        converted = tuple(
            (i, processors[name]) for i, name in enumerate(positions or ()) if name in processors
        )
        return cls(compiled.string, positions, processors, defaults, converted)

    def parameters(self, row: dict[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        if self.defaults:
            row = self.defaults | row
        if self.positions is None:
            convert = self.processors
            return {k: convert[k](v) if k in convert else v for k, v in row.items()}
        values = [row[name] for name in self.positions]
        for i, process in self.converted:
            values[i] = process(values[i])
        return tuple(values)


def _is_sqlite_json(bind: Any, dialect: Dialect) -> bool:
    return (
        dialect.name == "sqlite"
        and isinstance(bind.type, JSON)
        and not bind.type.none_as_null
        and getattr(dialect, "_json_serializer", None) is None
    )


def _sqlite_json(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """SQLAlchemy's JSON text for SQLite (``json.dumps``), without the call for the values most
    rows carry: none, or an empty list."""

    def json_text(value: Any) -> Any:
        if value is None:
            return "null"
        if not value and isinstance(value, list | tuple):
            return "[]"
        return process(value)

    return json_text


class PreparedInsert:
    def __init__(self, statement: Insert) -> None:
        self.statement = statement
        self._compiled: dict[tuple[str, tuple[str, ...]], _Compiled] = {}

    def run(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` (dicts with the same keys) in one round trip."""
        if not rows:
            return
        keys = tuple(rows[0])
        if any(tuple(row) != keys for row in rows):
            for row in rows:  # rows of different shapes: one at a time, in order
                self.run(conn, [row])
            return
        compiled = self._for(conn.dialect, keys)
        parameters = [compiled.parameters(row) for row in rows]
        if len(parameters) > 1:
            _execute(conn, compiled.sql, parameters, many=True).close()
        else:
            _execute(conn, compiled.sql, parameters[0]).close()

    def _for(self, dialect: Dialect, keys: tuple[str, ...]) -> _Compiled:
        cache_key = (dialect.name, keys)
        compiled = self._compiled.get(cache_key)
        if compiled is None:
            compiled = self._compiled[cache_key] = _Compiled.of(self.statement, dialect, keys)
        return compiled


class PreparedQuery:
    """A SELECT or UPDATE with named bind parameters (no expanding IN: build one statement per
    list length instead, see ``QueryFamily``)."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: dict[str, tuple[_Compiled, Callable[[tuple[Any, ...]], Any] | None]] = {}

    def rows(self, conn: Connection, parameters: dict[str, Any] | None = None) -> list[Any]:
        """The statement's rows, as named tuples with the columns' result processing done."""
        compiled, make_row = self._for(conn.dialect)
        assert make_row is not None, "rows() of a statement that returns none"
        cursor = _execute(conn, compiled.sql, compiled.parameters(parameters or {}))
        try:
            return [make_row(row) for row in cursor.fetchall()]
        finally:
            cursor.close()

    def first(self, conn: Connection, parameters: dict[str, Any] | None = None) -> Any:
        rows = self.rows(conn, parameters)
        return rows[0] if rows else None

    def run(self, conn: Connection, parameters: dict[str, Any] | None = None) -> int:
        """Run an UPDATE or DELETE; the number of rows it matched."""
        compiled, _ = self._for(conn.dialect)
        cursor = _execute(conn, compiled.sql, compiled.parameters(parameters or {}))
        count: int = cursor.rowcount
        cursor.close()
        return count

    def _for(self, dialect: Dialect) -> tuple[_Compiled, Callable[[tuple[Any, ...]], Any] | None]:
        entry = self._compiled.get(dialect.name)
        if entry is None:
            compiled = _Compiled.of(self.statement, dialect)
            entry = self._compiled[dialect.name] = (compiled, _row_maker(self.statement, dialect))
        return entry


def _execute(conn: Connection, sql: str, parameters: Any, many: bool = False) -> Any:
    """Run on the driver's cursor; outside a transaction, through the connection (it begins one:
    on SQLite, the driver alone would commit every statement on its own)."""
    if not conn.in_transaction():
        return conn.exec_driver_sql(sql, parameters)  # fetchall, rowcount, close: as a cursor
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if many:
            cursor.executemany(sql, parameters)
        else:
            cursor.execute(sql, parameters)
    except Exception as exc:
        # As Connection.execute does: wrap, notice a lost connection and invalidate it.
        conn._handle_dbapi_exception(exc, sql, parameters, cursor, None)
    return cursor


def _row_maker(statement: Executable, dialect: Dialect) -> Callable[[tuple[Any, ...]], Any] | None:
    columns = statement.compile(dialect=dialect)._result_columns  # type: ignore[attr-defined]
    if not columns:
        return None
    row_type = namedtuple("Row", [c.keyname for c in columns])  # type: ignore[misc]
    processors = [c.type._cached_result_processor(dialect, None) for c in columns]
    if not any(processors):
        return row_type._make

    def make_row(row: tuple[Any, ...]) -> Any:
        return row_type._make(
            [v if p is None else p(v) for p, v in zip(processors, row, strict=True)]
        )

    return make_row


class QueryFamily:
    """One ``PreparedQuery`` per shape of a statement whose IN lists vary in length; ``build``
    makes the statement for given list lengths (parameters named by the caller)."""

    def __init__(self, build: Callable[..., Executable]) -> None:
        self.build = build
        self._members: dict[tuple[int, ...], PreparedQuery] = {}

    def __call__(self, *lengths: int) -> PreparedQuery:
        member = self._members.get(lengths)
        if member is None:
            member = self._members[lengths] = PreparedQuery(self.build(*lengths))
        return member
