"""`scenario run --via mllp --mllp HOST:PORT --db URL` against a real `serve --clock message`
process (docs/contracts.md §1): files stay independent on one gateway, in any order, run again."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.scenarios.live import retag_control_id, retag_pid3
from rems_core.registry import npi_is_valid
from rems_core.store.db import upgrade
from tests.test_serve import Gateway, clean_environment, free_port, start

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
SCENARIOS = ROOT / "fixtures" / "scenarios"
ADMIN_TOKEN = "live-scenario-token"
HL7_FILE = SCENARIOS / "hl7-oru-lab-results.yaml"
IDEMPOTENT_FILE = SCENARIOS / "dispense-idempotent-request-id.yaml"
FILES = [
    HL7_FILE,
    IDEMPOTENT_FILE,
    SCENARIOS / "anc-boundaries-general.yaml",
    SCENARIOS / "advance-to-labs-missed.yaml",
    SCENARIOS / "lab-patient-not-matched.yaml",
    SCENARIOS / "identity-late-link.yaml",  # pid, review, held: tagged values, any order
    SCENARIOS / "adt-merge.yaml",
    SCENARIOS / "monthly-psf-draft.yaml",  # tasks and draft read on --db, complete_draft
]


@dataclass
class Live:
    gateway: Gateway
    mllp_port: int
    db_path: Path

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path}"


def serve(folder: Path, *args: str) -> Live:
    mllp_port = free_port()
    gateway = start(
        folder,
        "--clock",
        "message",
        "--timezone",
        "UTC",
        "--mllp-port",
        str(mllp_port),
        *args,
        REMS_ADMIN_TOKEN=ADMIN_TOKEN,
    )
    return Live(gateway, mllp_port, folder / "rems.db")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    running = serve(tmp_path_factory.mktemp("live"))
    yield running
    running.gateway.terminate()


def run_live(live: Live, *files: Path, http: bool = False, sender: str | None = None) -> str:
    """The runner's output; its exit code follows the last line."""
    args = ["--via", "mllp", "--mllp", f"127.0.0.1:{live.mllp_port}", "--db", live.db_url]
    args += ["--gateway", live.gateway.url] if http else []
    args += ["--sender", sender] if sender else []
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "scenario", "run", *args, *map(str, files)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_environment(REMS_ADMIN_TOKEN=ADMIN_TOKEN),
        timeout=120,
    )
    return f"{result.stdout}{result.stderr}exit {result.returncode}"


def query(live: Live, sql: str, *params: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(live.db_path) as conn:
        return conn.execute(sql, params).fetchall()


def new_npi(prefix: str) -> str:
    return next(n for d in "0123456789" if npi_is_valid(n := prefix + d))


LAB_FILE = """
name: {name}
registry:
  prescribers: [{{npi: "{npi}", certified: {certified}}}]
  pharmacies: [{{npi: "1588667638", name: "General Hospital Pharmacy", enrollments: [{{setting: inpatient, certified: true}}, {{setting: outpatient, certified: true}}]}}]
  patients:
    - id: P1
      identifiers: [{{system: "{system}", value: "LIVE-MRN-1"}}]
      enrollment: {{by: "{npi}", date: 2021-11-20, anc: {{value: 2100, unit: /uL, drawn: 2021-11-18}}}}
steps:
  - at: 2021-12-01T09:00:00Z
    lab: {{patient: P1, code: "751-8", value: 0.8, unit: "10*3/uL", drawn: 2021-12-01T08:00:00Z}}
    expect: {{anc: 800, category: {category}, warnings: [ANC_BELOW_THRESHOLD]}}
"""


def lab_file(
    folder: Path,
    name: str,
    npi: str,
    certified: str = "true",
    category: str = "moderate",
    system: str = "urn:oid:2.16.840.1.113883.3.999.7",
) -> Path:
    path = folder / f"{name}.yaml"
    text = LAB_FILE.format(
        name=name, npi=npi, certified=certified, category=category, system=system
    )
    path.write_text(text)
    return path


def test_scenario_files_pass_against_a_running_gateway(live: Live) -> None:
    output = run_live(live, *FILES)
    assert output.endswith("exit 0"), output
    assert f"{len(FILES)} passed, 0 failed" in output


def test_two_files_run_twice_in_either_order_through_the_admin_api(live: Live) -> None:
    first = run_live(live, HL7_FILE, IDEMPOTENT_FILE, http=True)
    again = run_live(live, IDEMPOTENT_FILE, HL7_FILE, http=True)
    assert first.endswith("exit 0") and again.endswith("exit 0"), first + again
    # Each run had its own patient: the file's identifier value with a run tag.
    tagged = query(live, "SELECT value FROM patient_identifier WHERE value LIKE 'HL7-MRN-1-%'")
    assert len({value for (value,) in tagged}) >= 2
    assert query(live, "SELECT value FROM patient_identifier WHERE value = 'HL7-MRN-1'") == []


def test_a_wrong_expectation_exits_1_with_the_diff(live: Live, tmp_path: Path) -> None:
    path = lab_file(tmp_path, "wrong", new_npi("192837465"), category="mild")
    output = run_live(live, path)
    assert output.endswith("exit 1"), output
    assert (
        "step 1 (lab at 2021-12-01T09:00:00+00:00): category: expected 'mild', got 'moderate'"
        in output
    )


def test_files_that_disagree_about_a_prescriber_are_an_error(live: Live, tmp_path: Path) -> None:
    npi = new_npi("918273645")
    certified = lab_file(tmp_path, "certified", npi)
    uncertified = lab_file(tmp_path, "uncertified", npi, certified="false")
    output = run_live(live, certified, uncertified)
    assert output.endswith("exit 1"), output
    assert "1 passed, 1 failed" in output
    assert f"prescriber {npi}: certified is False in this file, True in the database" in output
    assert "Nothing was loaded. Run it against a fresh database" in output
    # Checked before loading: the shared record is as the first file left it.
    assert query(live, "SELECT certified FROM prescriber WHERE npi = ?", npi) == [(1,)]


SENDERS = """
accept_unknown: false
senders:
  - application: LIVE-RUNNER
    facility: GH
    assigning_authorities: {"http://hospital.example/mrn": "http://hospital.example/mrn"}
"""


def test_sender_identity_and_a_non_oid_system_through_the_senders_file(tmp_path: Path) -> None:
    senders = tmp_path / "senders.yaml"
    senders.write_text(SENDERS)
    path = lab_file(tmp_path, "mapped", new_npi("564738291"), system="http://hospital.example/mrn")
    running = serve(tmp_path, "--senders", str(senders))
    try:
        refused = run_live(running, path)
        accepted = run_live(running, path, sender="LIVE-RUNNER|GH")
    finally:
        running.gateway.terminate()
    assert refused.endswith("exit 1"), refused
    assert "anc: expected 800, got None" in refused  # an unknown sender's results: not stored
    assert accepted.endswith("exit 0"), accepted


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--via", "mllp", "--mllp", "127.0.0.1:2575"], "--mllp needs --db"),
        (["--mllp", "127.0.0.1:2575", "--db", "sqlite:///x.db"], "--mllp needs --via mllp"),
        (["--via", "mllp", "--mllp", "localhost", "--db", "{db}"], "expected HOST:PORT"),
        (["--via", "mllp", "--mllp", "127.0.0.1:2575", "--db", "{none}"], "no such database"),
        (["--via", "mllp", "--sender", "A|B"], "give --mllp HOST:PORT"),
    ],
)
def test_live_options_that_do_not_fit_together_exit_2(
    tmp_path: Path, options: list[str], message: str
) -> None:
    db = tmp_path / "migrated.db"
    upgrade(f"sqlite:///{db}")
    urls = {"db": f"sqlite:///{db}", "none": f"sqlite:///{tmp_path / 'none.db'}"}
    args = ["scenario", "run", str(HL7_FILE), *(o.format(**urls) for o in options)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "none.db").exists()


# --- rewriting raw hl7 steps ----------------------------------------------------------------


def test_pid3_values_of_the_file_are_retagged_with_the_message_delimiters() -> None:
    message = (
        "MSH#*$!@#A#B#R#R#20211201##ORU*R01#C-1#P#2.5.1\r"
        "PID#1##MRN!S!1***GH@1.2.3@ISO$OTHER***X##Doe*Jane\r"
        "OBX#1#NM#751-8**LN##0.8\r"
    )
    values = {"MRN*1": "MRN*1-abc"}
    rewritten = retag_control_id(retag_pid3(message, values), "abc")
    assert rewritten.split("\r")[1] == "PID#1##MRN!S!1-abc***GH@1.2.3@ISO$OTHER***X##Doe*Jane"
    assert rewritten.split("\r")[0].split("#")[9] == "C-1-abc"
    assert rewritten.split("\r")[2] == "OBX#1#NM#751-8**LN##0.8"


def test_a_raw_step_with_a_byte_order_mark_or_three_encoding_characters_is_retagged() -> None:
    message = "\ufeffMSH|^~&|A|B|R|R|20211201||ORU^R01|C-1|P|2.5.1\rPID|1||MRN-1^^^GH&1.2.3&ISO\r"
    rewritten = retag_control_id(retag_pid3(message, {"MRN-1": "MRN-1-abc"}), "abc")
    assert rewritten.startswith("\ufeffMSH|^~&|A|B|R|R|20211201||ORU^R01|C-1-abc|P|2.5.1\r")
    assert rewritten.split("\r")[1] == "PID|1||MRN-1-abc^^^GH&1.2.3&ISO"
