"""A longer run of the FHIR mutation fuzzing (tests/fhir_mutations.py), for manual use:

    .venv/bin/python -m tests.fuzz.fhir_mutations --examples 20000 [--db postgresql+psycopg://…]

A real server on a real database (a fresh SQLite database, or the PostgreSQL maintenance URL
given, from which a fresh database is cloned); random, not derandomized; stops at the first
answer that is a 5xx or an error without an OperationOutcome and prints the request that made it
(a fixture's mutation: no patient data)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings

from gateway.app.bootstrap import assemble
from gateway.app.context import UnitContext
from gateway.app.values import Source
from gateway.scenarios.runner import DatabaseFactory
from rems_core.store.db import make_engine
from tests.conftest import PACKS, run
from tests.fhir_mutations import check_answer, fixtures, mutated, send
from tests.http_server import running_app
from tests.test_service import registry


def fuzz(client: httpx.Client, examples: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=mutated(fixtures()))
    def one(case: tuple[str, dict[str, Any]]) -> None:
        endpoint, body = case
        check_answer(send(client, endpoint, body))

    one()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--db", default=None, help="a PostgreSQL maintenance database URL")
    args = parser.parse_args(argv)
    factory = DatabaseFactory(args.db) if args.db else DatabaseFactory()
    engine = make_engine(factory.fresh_url())
    application = assemble(engine, UnitContext(PACKS, rules="clozapine-rems-2021"))
    run(application.service.load_registry(registry(), Source("fuzz")))
    started = time.monotonic()
    try:
        with (
            running_app(application.service, engine) as base,
            httpx.Client(base_url=base, timeout=60) as client,
        ):
            fuzz(client, args.examples)
    finally:
        application.writer.stop()
        engine.dispose()
        factory.close()
    print(f"{args.examples} examples, no failure, {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
