"""`scenario clients` and `scenario run --via fhir --fhir URL --smart-keys DIR` against a real
`serve --clock message --smart-clients … --cds-clients …` process (docs/contracts.md §1): the runner's SMART clients
are made once for the operator, and files run over FHIR on one gateway, again and again."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli import app
from tests.test_scenario_live import lab_file
from tests.test_serve import Gateway, clean_environment, start

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
SCENARIOS = ROOT / "fixtures" / "scenarios"
LAB_FILE = SCENARIOS / "anc-boundaries-general.yaml"
DISPENSE_FILE = SCENARIOS / "dispense-idempotent-request-id.yaml"
SIGNING_FILE = SCENARIOS / "psf-designee-signature.yaml"
RAW_FILE = SCENARIOS / "fhir-raw-resources.yaml"  # expects derived and usable: read from --db
FILES = [LAB_FILE, DISPENSE_FILE, SIGNING_FILE, RAW_FILE, SCENARIOS / "advance-to-labs-missed.yaml"]
FILES += [SCENARIOS / "identity-late-link.yaml", SCENARIOS / "adt-identify.yaml"]
FILES += [SCENARIOS / "fhir-client-patient.yaml"]  # client Patient ids tagged per run
FILES += [SCENARIOS / "monthly-psf-draft.yaml"]  # Task and draft searches, the draft's PUT
FILES += [SCENARIOS / "cds-hooks-rationale.yaml"]  # CDS hooks with the runner's JWT, feedback
NEW_YORK_FILE = SCENARIOS / "timezone-new-york.yaml"  # wants --timezone America/New_York
KNOWN_NPI = "1992837462"  # valid check digits; a client is made for it
UNKNOWN_NPI = "1918273644"  # valid check digits; no client for it


@dataclass
class Live:
    gateway: Gateway
    folder: Path
    keys: Path

    @property
    def db_path(self) -> Path:
        return self.folder / "rems.db"


def rems_gateway(*args: str) -> str:
    """The command's output; its exit code follows the last line."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_environment(),
        timeout=120,
    )
    return f"{result.stdout}{result.stderr}exit {result.returncode}"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("fhir-live")
    wrong = lab_file(folder, "wrong", KNOWN_NPI, category="mild")
    files = [*FILES, wrong, NEW_YORK_FILE]
    made = rems_gateway("scenario", "clients", *map(str, files), "--out", str(folder))
    assert made.endswith("exit 0"), made
    clients, cds = folder / "smart-clients.yaml", folder / "cds-clients.yaml"
    gateway = start(
        folder, "--clock", "message", "--timezone", "UTC", "--smart-clients", str(clients),
        "--cds-clients", str(cds),
    )  # fmt: skip
    yield Live(gateway, folder, folder)
    gateway.terminate()


def run_fhir(live: Live, *files: Path, db: bool = True) -> str:
    args = ["--via", "fhir", "--fhir", live.gateway.url, "--smart-keys", str(live.keys)]
    args += ["--db", f"sqlite:///{live.db_path}"] if db else []
    return rems_gateway("scenario", "run", *args, *map(str, files))


def test_clients_file_has_public_keys_and_the_keys_are_private(live: Live) -> None:
    text = (live.keys / "smart-clients.yaml").read_text()
    assert "PRIVATE" not in text
    clients = {c["client_id"]: c for c in yaml.safe_load(text)["clients"]}
    assert "admin" in clients["scenario-runner"]["scopes"]
    assert clients[f"scenario-prescriber-{KNOWN_NPI}"]["fhir_user"] == f"Practitioner/{KNOWN_NPI}"
    assert "scenario-prescriber-1602947180" in clients  # from the signing file's registry
    for client_id in clients:
        mode = stat.S_IMODE((live.keys / f"{client_id}.pem").stat().st_mode)
        assert mode == 0o600, (client_id, oct(mode))


def test_scenario_files_pass_over_fhir_against_a_running_gateway(live: Live) -> None:
    output = run_fhir(live, *FILES)
    assert output.endswith("exit 0"), output
    assert f"{len(FILES)} passed, 0 failed" in output


def test_without_the_database_lab_dispense_and_signing_files_pass(live: Live) -> None:
    output = run_fhir(live, LAB_FILE, DISPENSE_FILE, SIGNING_FILE, db=False)
    assert output.endswith("exit 0"), output


def test_derived_and_usable_without_the_database_fail_saying_why(live: Live) -> None:
    output = run_fhir(live, RAW_FILE, db=False)
    assert output.endswith("exit 1"), output
    assert 'derived: expected False, got "not read: give --db, the gateway\'s database"' in output


def test_one_file_twice_gets_a_fresh_patient_each_run(live: Live) -> None:
    first = run_fhir(live, DISPENSE_FILE)
    again = run_fhir(live, DISPENSE_FILE)
    assert first.endswith("exit 0") and again.endswith("exit 0"), first + again
    with sqlite3.connect(live.db_path) as conn:
        sql = "SELECT DISTINCT value FROM patient_identifier WHERE value LIKE ?"
        rows = conn.execute(sql, ("DISPENSE-IDEMPOTENT-REQUEST-ID-IDP-%",)).fetchall()
    assert len(rows) >= 2, rows


def test_a_wrong_expectation_exits_1_with_the_diff(live: Live) -> None:
    output = run_fhir(live, live.folder / "wrong.yaml")
    assert output.endswith("exit 1"), output
    assert (
        "step 1 (lab at 2021-12-01T09:00:00+00:00): category: expected 'mild', got 'moderate'"
        in output
    )


def test_a_prescriber_without_a_client_fails_the_file_naming_it(live: Live, tmp_path: Path) -> None:
    path = lab_file(tmp_path, "unknown-prescriber", UNKNOWN_NPI)
    output = run_fhir(live, path, LAB_FILE)
    assert output.endswith("exit 1"), output
    assert "1 passed, 1 failed" in output
    assert f"error: no SMART client scenario-prescriber-{UNKNOWN_NPI} in {live.keys}" in output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--via", "fhir", "--fhir", "http://127.0.0.1:9"], "--fhir needs --smart-keys"),
        (["--fhir", "http://127.0.0.1:9", "--smart-keys", "k"], "--fhir needs --via fhir"),
        (["--via", "fhir", "--smart-keys", "k"], "give --fhir URL"),
        (["--via", "fhir", "--fhir", "127.0.0.1:9", "--smart-keys", "k"], "expected http(s)://"),
    ],
)
def test_fhir_options_that_do_not_fit_together_exit_2(options: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["scenario", "run", str(LAB_FILE), *options])
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_file_for_another_time_zone_fails_with_a_hint(live: Live) -> None:
    """The gateway runs on UTC; the file's day counts are New York's: its failures say so."""
    output = run_fhir(live, NEW_YORK_FILE)
    assert output.endswith("exit 1"), output
    hint = (
        "hint: the gateway's time zone is UTC, and this file's is America/New_York: run it "
        "against a gateway started with --timezone America/New_York"
    )
    assert hint in output
    assert "0 passed, 1 failed, 0 skipped" in output
