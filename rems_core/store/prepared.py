"""INSERTs compiled once per dialect and column set, for the hot path (lab messages, audit).

``Connection.execute`` of a Core statement spends most of its time on per-call work (cache key,
parameter coercion, execution context set-up): about 110 µs for one observation row on SQLite,
against 35 µs for the same INSERT through ``exec_driver_sql`` with values already converted by the
columns' own bind processors. Errors still come back as SQLAlchemy's ``DBAPIError`` (the writer's
reconnect and retry rely on that).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Insert
from sqlalchemy.engine.interfaces import Dialect


@dataclass(frozen=True)
class _Compiled:
    sql: str
    positions: tuple[str, ...] | None  # parameter order for positional paramstyles
    processors: dict[str, Callable[[Any], Any]]

    def parameters(self, row: dict[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        convert = self.processors
        if self.positions is None:
            return {k: convert[k](v) if k in convert else v for k, v in row.items()}
        return tuple(convert[k](row[k]) if k in convert else row[k] for k in self.positions)


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
        conn.exec_driver_sql(compiled.sql, parameters if len(parameters) > 1 else parameters[0])

    def _for(self, dialect: Dialect, keys: tuple[str, ...]) -> _Compiled:
        cache_key = (dialect.name, keys)
        compiled = self._compiled.get(cache_key)
        if compiled is None:
            statement = self.statement.compile(dialect=dialect, column_keys=list(keys))
            positions = statement.positiontup
            compiled = _Compiled(
                statement.string,
                tuple(positions) if positions is not None else None,
                dict(statement._bind_processors),
            )
            self._compiled[cache_key] = compiled
        return compiled
