"""What the scenario runner says (issue 18): a registry conflict in ISO text with a way on, the
example registry sharing a database with the scenario files, a hint when a running gateway has
another rule pack or time zone than the file, and files whose every step was skipped reported
as SKIP, not PASS."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.app.values import Source
from gateway.scenarios.channel import InProcessChannel, NotSupportedYet
from gateway.scenarios.fhir_live import LiveFhirChannel, LiveFhirGateway, gateway_site
from gateway.scenarios.file import Scenario, Step, load
from gateway.scenarios.live import registry_conflict, shared_disagreements, shown
from gateway.scenarios.runner import (
    FileReport,
    StepReport,
    _run_steps,
    format_report,
    run_file,
    summary_line,
)
from rems_core.registry import RegistryDocument
from tests.conftest import PACKS, committed, run, sqlite_only
from tests.test_serve import clean_environment

ROOT = Path(__file__).parent.parent
SCENARIOS = ROOT / "fixtures" / "scenarios"
EXAMPLE = ROOT / "fixtures" / "registry" / "example.yaml"
HL7_ONLY = SCENARIOS / "hl7-oru-lab-results.yaml"  # every step an hl7 step
DISPENSE_FILE = SCENARIOS / "dispense-idempotent-request-id.yaml"
NEW_YORK = SCENARIOS / "timezone-new-york.yaml"


def document(path: Path) -> RegistryDocument:
    data = yaml.safe_load(path.read_text())
    return RegistryDocument.model_validate(data["registry"])


# --- the shared registry -----------------------------------------------------------------------


def test_registry_values_are_shown_as_the_file_writes_them() -> None:
    assert shown(date(2021, 11, 16)) == "2021-11-16"
    assert shown(None) == "not set"
    assert shown(True) == "True"
    assert shown("Ann Lee") == '"Ann Lee"'
    assert shown([("D1", "Bo Park"), ("D3", "Kim Ode")]) == '[D1 "Bo Park", D3 "Kim Ode"]'
    enrollment = ("inpatient", True, date(2022, 1, 3), None)
    assert shown([enrollment]) == "[inpatient certified on 2022-01-03]"
    assert shown([]) == "none"


@sqlite_only  # the message, not the database
def test_a_disagreeing_file_is_told_in_iso_text_and_how_to_go_on(service: Any) -> None:
    dated = {
        "prescribers": [
            {
                "npi": "1234567893",
                "name": "Ann Lee",
                "certified": True,
                "certified_on": "2021-11-16",
            }
        ]
    }
    run(service.load_registry(RegistryDocument.model_validate(dated), Source("test")))
    problems = committed(service, lambda s: shared_disagreements(s, document(DISPENSE_FILE)))
    assert (
        "prescriber 1234567893: certified_on is not set in this file, 2021-11-16 in the database"
        in problems
    )
    assert not any("datetime" in p for p in problems), problems
    message = str(registry_conflict(problems))
    assert "datetime.date(" not in message
    assert "Nothing was loaded" in message
    assert "a fresh database" in message and "agree with the database's" in message


def shared_entries(doc: RegistryDocument, npis: set[str]) -> list[dict[str, Any]]:
    entries = [*doc.prescribers, *doc.pharmacies]
    return sorted((e.model_dump(mode="json") for e in entries if e.npi in npis), key=str)


@sqlite_only  # the fixtures, not the database
def test_the_example_registry_shares_a_database_with_the_scenario_files(service: Any) -> None:
    """The Quickstart loads fixtures/registry/example.yaml; every scenario file then runs
    against that database except the few whose Ann Lee or General Hospital Pharmacy differ from
    most files' on purpose (they cannot share a database with those files either)."""
    example = document(EXAMPLE)
    run(service.load_registry(example, Source("test")))
    npis = {p.npi for p in example.prescribers} | {p.npi for p in example.pharmacies}
    common = shared_entries(document(DISPENSE_FILE), npis)
    disagreeing, unlike_most = set(), set()
    paths = sorted(SCENARIOS.glob("*.yaml"))
    for path in paths:
        if committed(service, lambda s, p=path: shared_disagreements(s, document(p))):
            disagreeing.add(path.name)
        mine = shared_entries(document(path), npis)
        if any(entry not in common for entry in mine):
            unlike_most.add(path.name)
    assert disagreeing == unlike_most
    assert len(disagreeing) <= 5 < len(paths)


# --- hints on a running gateway ------------------------------------------------------------


def live_channel(path: Path, site: tuple[str | None, str | None]) -> LiveFhirChannel:
    channel = LiveFhirChannel(
        None, load(path), LiveFhirGateway("http://127.0.0.1:1", Path("/nonexistent"))
    )
    channel.site = site
    return channel


def first_step(channel: InProcessChannel) -> Step:
    return channel.scenario.steps[0]


def test_a_failed_step_names_the_gateways_other_rule_pack() -> None:
    channel = live_channel(DISPENSE_FILE, ("clozapine-label-2025", "UTC"))
    step = first_step(channel)
    (hint,) = channel.hints(step, {"rule_pack": "clozapine-label-2025"})
    assert "answered with rule pack clozapine-label-2025" in hint
    assert "this file's rules are clozapine-rems-2021" in hint
    assert "--rules clozapine-rems-2021" in hint
    assert channel.hints(step, {"rule_pack": "clozapine-rems-2021"}) == []


def test_without_a_pack_in_the_answer_the_gateways_setting_is_compared() -> None:
    channel = live_channel(DISPENSE_FILE, ("auto", "UTC"))
    (hint,) = channel.hints(first_step(channel), {"anc": 800})
    assert "the gateway runs --rules auto" in hint
    assert live_channel(DISPENSE_FILE, (None, None)).hints(first_step(channel), {}) == []


def test_a_failed_step_names_the_gateways_other_time_zone() -> None:
    channel = live_channel(NEW_YORK, ("clozapine-rems-2021", "UTC"))
    assert channel.scenario.rules == "clozapine-rems-2021"
    (hint,) = channel.hints(first_step(channel), {})
    assert "the gateway's time zone is UTC, and this file's is America/New_York" in hint
    assert "--timezone America/New_York" in hint


def test_the_site_is_read_from_the_capability_statement() -> None:
    statement = {
        "resourceType": "CapabilityStatement",
        "extension": [
            {
                "url": "urn:rems-gateway:fhir:site",
                "extension": [
                    {"url": "rules", "valueString": "auto"},
                    {"url": "timezone", "valueCode": "America/Chicago"},
                ],
            }
        ],
    }

    async def read(answer: httpx.Response) -> tuple[str | None, str | None]:
        transport = httpx.MockTransport(lambda request: answer)
        async with httpx.AsyncClient(transport=transport) as http:
            return await gateway_site(http, "http://gateway.test")

    assert asyncio.run(read(httpx.Response(200, json=statement))) == ("auto", "America/Chicago")
    bare = httpx.Response(200, json={"resourceType": "CapabilityStatement"})
    assert asyncio.run(read(bare)) == (None, None)
    assert asyncio.run(read(httpx.Response(404, text="no"))) == (None, None)


class Answering(InProcessChannel):
    """A channel whose steps answer a fixed dispense outcome, and hint once."""

    def __init__(self, scenario: Scenario, skip: bool = False) -> None:
        super().__init__(None, scenario)
        self.skip = skip

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def load_registry(self) -> None:
        pass

    async def run(self, step: Step) -> dict[str, Any]:
        if self.skip:
            raise NotSupportedYet("hl7 steps are not sent over FHIR")
        return {"outcome": "denied", "rule_pack": "clozapine-label-2025"}

    def hints(self, step: Step, actual: dict[str, Any]) -> list[str]:
        return ["the gateway has another pack"]


def test_hints_are_added_to_failed_steps_only() -> None:
    scenario = load(DISPENSE_FILE)
    report = FileReport(DISPENSE_FILE, scenario.name)
    asyncio.run(_run_steps(Answering(scenario), scenario, report))
    failed = [s for s in report.steps if s.problems]
    assert failed, format_report(report)
    assert all(s.problems[-1] == "hint: the gateway has another pack" for s in failed)
    text = format_report(report)
    assert f"{failed[0].step.label}: hint: the gateway has another pack" in text
    quiet = [s for s in report.steps if not s.step.expect]
    assert all(not s.problems for s in quiet)


# --- skipped files -----------------------------------------------------------------------------


def test_a_file_whose_every_step_was_skipped_is_skip_not_pass() -> None:
    scenario = load(HL7_ONLY)
    report = FileReport(HL7_ONLY, scenario.name)
    asyncio.run(_run_steps(Answering(scenario, skip=True), scenario, report))
    assert report.passed and report.skipped and report.status == "SKIP"
    text = format_report(report)
    assert text.startswith(f"SKIP {HL7_ONLY}")
    assert "every step was skipped: hl7 steps are not sent over FHIR" in text
    assert text.count("hl7 steps are not sent over FHIR") == 1  # said once
    assert format_report(report, verbose=True).count("skipped (") == len(scenario.steps)


def test_the_summary_counts_skipped_files_apart() -> None:
    def report(problems: list[str], skipped: str = "") -> FileReport:
        step = load(DISPENSE_FILE).steps[0]
        return FileReport(DISPENSE_FILE, "x", [StepReport(step, {}, problems, skipped)])

    reports = [report([]), report(["outcome: …"]), report([], skipped="hl7"), report([])]
    assert summary_line(reports) == "2 passed, 1 failed, 1 skipped"
    assert [r.status for r in reports] == ["PASS", "FAIL", "SKIP", "PASS"]
    assert FileReport(DISPENSE_FILE, error="bad").status == "FAIL"


@sqlite_only
def test_an_all_hl7_file_over_fhir_is_skip(db_url: str) -> None:
    report = asyncio.run(run_file(HL7_ONLY, db_url, PACKS, "fhir"))
    assert report.status == "SKIP", format_report(report)


@pytest.mark.slow
def test_scenario_run_exits_0_with_skipped_files_counted_apart() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "scenario", "run", "--via", "fhir", str(HL7_ONLY)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_environment(),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SKIP {HL7_ONLY.relative_to(ROOT)}" in result.stdout or "SKIP " in result.stdout
    assert result.stdout.rstrip().endswith("0 passed, 0 failed, 1 skipped")
