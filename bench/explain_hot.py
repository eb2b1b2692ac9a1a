"""The query plan of every statement the hot paths run, on a database at scale (issue 20).

    python bench/explain_hot.py --db URL [--messages 300] [--orders 100] [--scheduled 100]

Runs, in this process, through the application as `serve` wires it: ORU^R01 lab results and
RDE^O11 refills for bench/mllp.py's 200 patients (on a database filled by bench/seed_scale.py
they have years of history), and the scheduled work for --scheduled patients. Every statement
sent to the database is caught on its way to the driver with its parameters and timed; each
distinct SELECT, UPDATE and DELETE is then EXPLAINed with the parameters it ran with (SQLite:
EXPLAIN QUERY PLAN; PostgreSQL: EXPLAIN), and any full scan of a table is flagged. The tables of
one row or a handful (the chain head, leases, settings, the parties) are scanned by design, and
PostgreSQL scans a table of fewer than 1,000 rows rather than use its index.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mllp import SENDERS, order_workload, workload  # noqa: E402
from sqlalchemy import Engine, event  # noqa: E402

import rems_core.store.prepared as prepared  # noqa: E402
from gateway.app.bootstrap import assemble  # noqa: E402
from gateway.app.context import UnitContext  # noqa: E402
from gateway.mllp.intake import Hl7Intake  # noqa: E402
from rems_core.store.db import is_sqlite, make_engine  # noqa: E402
from rems_core.store.repo import Store  # noqa: E402

#: Tables of one row or a handful: a scan of them is the plan.
SMALL_TABLES = {
    "audit_head",
    "scheduler_lease",
    "site_setting",
    "prescriber",
    "pharmacy",
    "pharmacy_enrollment",
    "designee",
    "designee_attachment",
    "trade_partner",
    "trade_partner_identifier",
    "subscription",
}
#: Statements that read a whole table by design, and why.
WHOLE_BY_DESIGN = {
    "SELECT patient.id FROM patient ORDER BY patient.id": "the scheduled work's list of patients",
}
PLANNER_SMALL = 1000  # rows below which a PostgreSQL sequential scan is the planner's choice
PLANNED = re.compile(r"^\s*(SELECT|UPDATE|DELETE|WITH)\b", re.IGNORECASE)


@dataclass
class Statement:
    sql: str
    parameters: Any
    calls: int = 0
    seconds: float = 0.0
    plan: list[str] = field(default_factory=list)
    scans: list[str] = field(default_factory=list)


class Catcher:
    """Every statement on its way to the driver: the prepared ones (rems_core.store.prepared
    runs them on the driver's cursor) and those through SQLAlchemy's execute."""

    def __init__(self, engine: Engine) -> None:
        self.statements: dict[str, Statement] = {}
        self._inner = 0
        original = prepared._execute

        def timed(conn: Any, sql: str, parameters: Any, many: bool = False) -> Any:
            started = time.perf_counter()
            self._inner += 1
            try:
                return original(conn, sql, parameters, many)
            finally:
                self._inner -= 1
                self.add(sql, parameters[0] if many else parameters, started)

        prepared._execute = timed
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(
        self, conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool
    ) -> None:
        conn.info["started"] = time.perf_counter()

    def _after(
        self, conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool
    ) -> None:
        if self._inner:  # a prepared statement outside a transaction: counted by timed()
            return
        self.add(sql, params[0] if many and params else params, conn.info.pop("started"))

    def add(self, sql: str, parameters: Any, started: float) -> None:
        statement = self.statements.setdefault(sql, Statement(sql, parameters))
        statement.calls += 1
        statement.seconds += time.perf_counter() - started


async def drive(engine: Engine, args: argparse.Namespace) -> None:
    application = assemble(engine, UnitContext())
    intake = Hl7Intake(application.service, SENDERS)
    now = datetime.now(UTC)
    try:
        labs = workload(args.messages, now, seed=77)
        orders = order_workload(args.orders, now, seed=78)
        for message in labs.messages + orders.messages:
            await intake.receive(message)
        with engine.connect() as conn:
            patients = Store(conn).patient_ids()[: args.scheduled]
        await application.service.run_scheduled(now, patients)  # RDAs expired since the seed
        started, units = time.perf_counter(), application.writer.units
        await application.service.run_scheduled(now, patients)
        took, units = time.perf_counter() - started, application.writer.units - units
        print(
            f"scheduled work (the second run): {len(patients)} patients in {took:.2f} s, "
            f"{len(patients) / took:.0f} patients/s, {units} units of work "
            f"({took * 1000 / max(units, 1):.0f} ms each)\n"
        )
    finally:
        application.writer.stop()


def explain(engine: Engine, statement: Statement) -> None:
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if is_sqlite(str(engine.url)):
            cursor.execute("EXPLAIN QUERY PLAN " + statement.sql, statement.parameters or ())
            statement.plan = [row[3] for row in cursor.fetchall()]
            statement.scans = [
                line.split()[1]
                for line in statement.plan
                if line.startswith("SCAN ") and line.split()[1] not in SMALL_TABLES
            ]
        else:
            cursor.execute("EXPLAIN (FORMAT JSON) " + statement.sql, statement.parameters or {})
            plan = cursor.fetchone()[0]
            plan = json.loads(plan) if isinstance(plan, str) else plan
            nodes = list(_nodes(plan[0]["Plan"]))
            statement.plan = [_describe(n) for n in nodes]
            statement.scans = [
                n["Relation Name"]
                for n in nodes
                if n["Node Type"] == "Seq Scan"
                and n["Relation Name"] not in SMALL_TABLES
                and _rows(cursor, n["Relation Name"]) >= PLANNER_SMALL
            ]
        raw.rollback()
    finally:
        raw.close()


def _rows(cursor: Any, table: str) -> float:
    """PostgreSQL's estimate of a table's rows: on a table this small its planner scans
    rather than use the index (e.g. no pharmacist overrides yet)."""
    cursor.execute("SELECT reltuples FROM pg_class WHERE relname = %s", (table,))
    return float(cursor.fetchone()[0])


def _nodes(node: dict[str, Any]) -> Any:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def _describe(node: dict[str, Any]) -> str:
    where = node.get("Index Name") or node.get("Relation Name") or ""
    return f"{node['Node Type']} {where}".strip()


def short(sql: str, width: int = 160) -> str:
    """The statement without its column lists (what it reads by is what the plan is about)."""
    text = " ".join(sql.split())
    text = re.sub(r"^SELECT .*? FROM ", "SELECT … FROM ", text)
    text = re.sub(r"^UPDATE (\S+) SET .*? WHERE ", r"UPDATE \1 SET … WHERE ", text)
    text = re.sub(r"\b\w+\.(\w+)", r"\1", text)  # table.column → column
    return text if len(text) <= width else text[: width - 1] + "…"


def report(engine: Engine, catcher: Catcher, show: Callable[[str], None] = print) -> int:
    planned = [s for s in catcher.statements.values() if PLANNED.match(s.sql)]
    planned.sort(key=lambda s: s.seconds, reverse=True)
    total = sum(s.seconds for s in catcher.statements.values())
    scans = 0
    show(
        f"{len(catcher.statements)} distinct statements, "
        f"{sum(s.calls for s in catcher.statements.values())} calls, {total:.2f} s in the "
        f"database; {len(planned)} SELECT/UPDATE/DELETE explained (slowest first):\n"
    )
    for statement in planned:
        explain(engine, statement)
        by_design = WHOLE_BY_DESIGN.get(" ".join(statement.sql.split()))
        if by_design:
            verdict = f"whole table by design ({by_design})"
        elif statement.scans:
            verdict = "FULL SCAN " + ", ".join(statement.scans)
            scans += 1
        else:
            verdict = "indexed"
        show(
            f"{statement.calls:6d} calls {statement.seconds * 1000 / statement.calls:8.3f} ms  "
            f"{verdict}\n    {short(statement.sql)}\n    plan: {'; '.join(statement.plan)}"
        )
    show(f"\n{scans} statement(s) with a full scan of a table that grows")
    return scans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a gateway database (bench/seed_scale.py)")
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--orders", type=int, default=100)
    parser.add_argument("--scheduled", type=int, default=100, help="patients of scheduled work")
    args = parser.parse_args()
    engine = make_engine(args.db)
    try:
        catcher = Catcher(engine)
        asyncio.run(drive(engine, args))
        sys.exit(1 if report(engine, catcher) else 0)
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
