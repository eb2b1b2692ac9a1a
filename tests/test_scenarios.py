"""Every scenario file in fixtures/scenarios passes in-process, on every backend of conftest's
db_url, and together they cover every reason code, warning code and rule pack."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from gateway.scenarios.runner import format_report, run_file
from rems_core.codes import Code
from tests.conftest import PACKS

FOLDER = Path(__file__).parent.parent / "fixtures" / "scenarios"
FILES = sorted(FOLDER.glob("*.yaml"))


@pytest.mark.parametrize("via", ["inprocess", "mllp", "fhir"])
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario_file_passes(path: Path, db_url: str, via: str) -> None:
    """On every backend (conftest's db_url), a fresh database per file; through the application
    service, with lab and hl7 steps through a real MLLP listener on a loopback port, and with
    lab, labs and fhir steps through the FHIR endpoint on a real HTTP server (an hl7 step, and
    the steps after it, are skipped there: docs/contracts.md §2)."""
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
