"""A longer fuzz run of the HL7 v2 intake (issue 11), for manual runs: see README.md here.

    .venv/bin/python -m tests.fuzz.fuzz_intake [--examples N] [--db URL]

The same properties as tests/test_hl7_mutations.py, over many more (random, not derandomized)
examples, on a fresh SQLite database or the PostgreSQL database named by --db.
"""

from __future__ import annotations

import argparse
import time

from hypothesis import HealthCheck, given, settings

from gateway.app.bootstrap import assemble
from gateway.app.context import UnitContext
from gateway.app.values import Source
from gateway.mllp.intake import Hl7Intake
from gateway.scenarios.runner import DatabaseFactory
from rems_core.rulepack import PackLibrary
from rems_core.store.db import make_engine
from tests.conftest import run
from tests.test_hl7_intake import LOCAL, NOW
from tests.test_hl7_mutations import ANY_INPUT, asked_for_none, assert_well_formed
from tests.test_hl7_mutations import unique_control_id as unique
from tests.test_service import registry


def fuzz(intake: Hl7Intake, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(ANY_INPUT)
    def one(message: bytes) -> None:
        message = unique(message)
        received = run(intake.receive(message, NOW))
        assert received.disposition != "error", message
        if received.ack is None:
            assert asked_for_none(message, received.code), message
        else:
            assert_well_formed(received.ack)

    one()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--db", help="a PostgreSQL maintenance database URL; default SQLite")
    args = parser.parse_args()
    databases = DatabaseFactory(args.db) if args.db else DatabaseFactory()
    url = databases.fresh_url()
    gateway = assemble(make_engine(url), UnitContext(PackLibrary(), rules="clozapine-rems-2021"))
    try:
        run(gateway.service.load_registry(registry(enrolled_on="2021-11-20"), Source("fuzz")))
        started = time.perf_counter()
        fuzz(Hl7Intake(gateway.service, LOCAL), args.examples)
        print(f"{args.examples} examples passed in {time.perf_counter() - started:.1f} s")
    finally:
        gateway.writer.stop()
        databases.drop(url)
        databases.close()


if __name__ == "__main__":
    main()
