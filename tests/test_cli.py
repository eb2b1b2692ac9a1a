"""The `rems-gateway` command as a user runs it: real processes, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
EXAMPLE_REGISTRY = ROOT / "fixtures" / "registry" / "example.yaml"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


SCENARIO = """
name: {name}
registry:
  prescribers: [{{npi: "1234567893", certified: true}}]
  pharmacies: [{{npi: "1588667638", enrollments: [{{setting: outpatient, certified: true}}]}}]
  patients:
    - id: P1
      identifiers: [{{system: "urn:oid:1.2.3", value: "MRN1"}}]
      enrollment: {{by: "1234567893", date: 2022-03-01, anc: {{value: 2100, unit: /uL, drawn: 2022-02-28}}}}
steps:
  - at: 2022-03-02T09:00:00Z
    dispense: {{patient: P1, pharmacy: "1588667638", prescriber: "1234567893", setting: outpatient, days_supply: 30}}
    expect: {{outcome: {outcome}, reasons: {reasons}}}
"""


@pytest.fixture
def scenario_files(tmp_path: Path) -> tuple[Path, Path]:
    good = tmp_path / "good.yaml"
    good.write_text(SCENARIO.format(name="passes", outcome="authorized", reasons="[]"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(SCENARIO.format(name="fails", outcome="denied", reasons="[PSF_OUT_OF_WINDOW]"))
    return good, bad


def test_scenario_run_exits_0_when_every_step_matches(scenario_files: tuple[Path, Path]) -> None:
    result = cli("scenario", "run", str(scenario_files[0]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 0 failed" in result.stdout


def test_scenario_run_exits_1_with_a_readable_diff(scenario_files: tuple[Path, Path]) -> None:
    result = cli("scenario", "run", *map(str, scenario_files))
    assert result.returncode == 1
    assert (
        "step 1 (dispense at 2022-03-02T09:00:00+00:00): outcome: expected 'denied', got 'authorized'"
        in result.stdout
    )
    assert "missing ['PSF_OUT_OF_WINDOW']" in result.stdout
    assert "1 passed, 1 failed" in result.stdout


def test_a_scenario_with_an_unknown_expect_key_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(
        SCENARIO.format(name="typo", outcome="authorized", reasons="[]").replace(
            "reasons:", "reason:"
        )
    )
    result = cli("scenario", "run", str(path))
    assert (
        result.returncode == 1
        and "expect (of a dispense step): unknown keys ['reason']" in result.stdout
    )


def test_db_upgrade_and_load_registry_are_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert cli("db", "upgrade", "--db", url).returncode == 0
    first = cli("load-registry", str(EXAMPLE_REGISTRY), "--db", url)
    second = cli("load-registry", str(EXAMPLE_REGISTRY), "--db", url)
    assert first.returncode == 0 and second.returncode == 0
    assert first.stdout == second.stdout == "loaded 2 prescribers, 2 pharmacies, 1 patients\n"
    assert "Doe" not in first.stdout + first.stderr


def test_load_registry_refuses_a_bad_npi(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text('registry:\n  prescribers: [{npi: "1234567890", certified: true}]\n')
    result = cli("load-registry", str(path), "--db", f"sqlite:///{tmp_path / 'x.db'}")
    assert result.returncode == 2 and "not a valid NPI" in result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("days_supply: 30}", "dayssupply: 30}"), "step 1 dispense: unknown keys ['dayssupply']"),
        (
            ("setting: outpatient, days", "setting: outpatent, days"),
            "setting: 'outpatent' is not one of inpatient, outpatient",
        ),
        (
            ("at: 2022-03-02T09:00:00Z", "at: 03/02/2022"),
            "step 1.at: '03/02/2022' is not an ISO 8601 time",
        ),
        (
            ("name: typo", "name: typo\ntimezone: Eastern"),
            "timezone: 'Eastern' is not an IANA time zone",
        ),
        (
            ("days_supply: 30}", "days_supply: 30, discharge: yes}"),
            "discharge: 'yes' is not true or false",
        ),
    ],
)
def test_a_malformed_step_is_reported_before_anything_runs(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(
        SCENARIO.format(name="typo", outcome="authorized", reasons="[]").replace(*change)
    )
    result = cli("scenario", "run", str(path))
    assert result.returncode == 1
    assert message in result.stdout and "Traceback" not in result.stdout + result.stderr
    assert "FAIL" in result.stdout and "— typo" in result.stdout


def test_verbose_shows_what_each_step_answered(scenario_files: tuple[Path, Path]) -> None:
    result = cli("scenario", "run", "-v", str(scenario_files[0]))
    assert (
        "ok   step 1 (dispense at 2022-03-02T09:00:00+00:00): ack=AA outcome=authorized"
        in result.stdout
    )


@pytest.mark.parametrize(
    ("flag", "value", "setting"),
    [
        ("--http-max-body-bytes", "10", "http_max_body_bytes"),
        ("--json-max-depth", "2", "json_max_depth"),
    ],
)
def test_serve_takes_the_input_limits_as_flags_and_refuses_absurd_ones(
    flag: str, value: str, setting: str
) -> None:
    """The body and nesting limits are settings like any other: flag, REMS_… or --config; a value
    out of range stops `serve` with one line naming the setting, before anything starts."""
    done = cli("serve", flag, value)
    assert done.returncode == 2
    assert setting in done.stderr
