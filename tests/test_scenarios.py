"""Every scenario file in fixtures/scenarios passes through every channel and on every backend of
conftest's db_url, and together they cover every reason code, warning code and rule pack.

Not every channel on every backend: every file runs through all three channels on SQLite, and
in process on PostgreSQL too. The cross-channel proof (a file's steps mean the same whether they
arrive as calls, as HL7 over MLLP or as FHIR over HTTP) is about the channels, not the database,
and SQLite gives it in full. The cross-database proof (every file's decisions, counters and
states are the same on PostgreSQL) is about the service and the store, which the in-process
channel reaches with nothing in between. What the MLLP and FHIR channels store on PostgreSQL of
their own (the message and its ACK before the ACK, FHIR resources, conditional creates) is the
subject of test_hl7_intake, test_hl7_pharmacy and the test_fhir_* modules, on both backends.
A file through MLLP or FHIR on PostgreSQL would repeat both proofs at 1–2 s a file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from gateway.scenarios.runner import format_report, run_file
from rems_core.codes import Code
from tests.conftest import BACKENDS, PACKS

FOLDER = Path(__file__).parent.parent / "fixtures" / "scenarios"
FILES = sorted(FOLDER.glob("*.yaml"))


# (backend, channel): every channel on SQLite, in process on every backend (the docstring).
CHANNELS = [("sqlite", "mllp"), ("sqlite", "fhir")] + [(b, "inprocess") for b in BACKENDS]


@pytest.mark.parametrize(
    ("db_url", "via"), CHANNELS, ids=[f"{b}-{v}" for b, v in CHANNELS], indirect=["db_url"]
)
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario_file_passes(path: Path, db_url: str, via: str) -> None:
    """A fresh database per file; through the application service, with lab and hl7 steps
    through a real MLLP listener on a loopback port, and with lab, labs and fhir steps through
    the FHIR endpoint on a real HTTP server (an hl7 step, and the steps after it, are skipped
    there: docs/contracts.md §2)."""
    report = asyncio.run(run_file(path, db_url, PACKS, via))
    assert report.passed, format_report(report)


def expected_codes_and_packs() -> tuple[set[str], set[str]]:
    codes, packs = set(), set()
    for path in FILES:
        data = yaml.safe_load(path.read_text())
        packs.add(str(data.get("rules") or "clozapine-rems-2021"))
        for step in data.get("steps") or []:
            expect = step.get("expect") or {}
            codes |= {str(c) for c in expect.get("reasons") or ()}
            codes |= {str(c) for c in expect.get("warnings") or ()}
    return codes, packs


def test_at_least_30_scenario_files() -> None:
    assert len(FILES) >= 30


def test_every_code_and_pack_appears_in_some_expectation() -> None:
    codes, packs = expected_codes_and_packs()
    assert sorted(set(Code) - codes) == []
    assert sorted(set(PACKS.ids) - packs) == []
