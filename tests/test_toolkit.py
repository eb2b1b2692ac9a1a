"""The operator's toolkit (gateway/toolkit/): `explain` stores nothing and says what the gateway
would do; `replay` files stored messages again, idempotently; `demo`; progress bars only on a
terminal."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select, text
from typer.testing import CliRunner

from gateway.app.reads import RemsReads
from gateway.app.service import RemsService
from gateway.app.values import Source
from gateway.cli import app
from gateway.mllp.intake import Hl7Intake
from gateway.toolkit import progress as progress_module
from mappings.hl7v2.senders import SenderDirectory
from rems_core.registry import registry_from
from rems_core.store import tables
from rems_core.store.db import make_engine
from rems_core.store.review_repo import ReviewFilter
from tests.conftest import committed, run, sqlite_only

ROOT = Path(__file__).parent.parent
HL7 = ROOT / "fixtures" / "hl7"
FHIR = ROOT / "fixtures" / "fhir"
REGISTRY = ROOT / "fixtures" / "registry" / "example.yaml"
OID = "urn:oid:2.16.840.1.113883.3.999.1"
runner = CliRunner()


def cli(*args: str) -> Any:
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def example_registry(with_patient: bool = True) -> Any:
    doc = yaml.safe_load(REGISTRY.read_text(encoding="utf-8"))
    if not with_patient:
        doc["registry"]["patients"] = []
    return registry_from(doc)


def load(service: RemsService, with_patient: bool = True) -> dict[str, str]:
    return run(service.load_registry(example_registry(with_patient), Source("test")))


def database_state(db_url: str) -> dict[str, tuple[int, str]]:
    """Every table's row count and a digest of its rows: what "nothing stored" compares."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            state = {}
            for table in tables.SQLModel.metadata.sorted_tables:
                rows = conn.execute(select(table)).all()
                digest = hashlib.sha256(repr(sorted(map(repr, rows))).encode()).hexdigest()
                state[table.name] = (len(rows), digest)
            return state
    finally:
        engine.dispose()


# --- explain -------------------------------------------------------------------------------------


@sqlite_only
def test_explain_an_oru_without_a_registry() -> None:
    result = cli("explain", str(HL7 / "oru-v251-loinc-anc.hl7"))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "no registry was consulted" in out
    assert "ORU^R01 from LAB|GENERAL HOSP, control id MSG0001" in out
    assert "OBX^1  751-8" in out and "ANC 800/µL, moderate" in out
    assert "OBX^2  2951-2 Sodium = 140 mmol/L — ignored" in out
    assert "MSA|AA|MSG0001" in out and "ANC_BELOW_THRESHOLD" in out
    assert "MRN123" not in out  # identifier values masked unless --reveal
    assert "MRN123" in cli("explain", "--reveal", str(HL7 / "oru-v251-loinc-anc.hl7")).output


@sqlite_only
def test_explain_json_has_the_same_content() -> None:
    result = cli("explain", "--json", str(HL7 / "oru-v27-wbc-differential.hl7"))
    assert result.exit_code == 0, result.output
    explained = json.loads(result.output)
    (item,) = explained["items"]
    assert item["sender"] and item["control_id"]
    assert item["patient"]["status"] == "not consulted"
    assert any(a["derived"] and a["anc_per_ul"] for a in item["ancs"])
    roles = {o.get("role") for o in item["observations"]}
    assert "wbc" in roles
    assert item["answer"]["code"] == "AA" and item["answer"]["text"].startswith("MSH|")


@sqlite_only
def test_explain_says_why_a_bare_identifier_matches_nobody(tmp_path: Path) -> None:
    bare = HL7 / "oru-v23-bare-mrn.hl7"
    explained = json.loads(cli("explain", "--json", str(bare)).output)["items"][0]
    assert explained["patient"]["status"] == "unmatched"
    assert "default_authority" in explained["patient"]["why"]
    assert "PATIENT_NOT_MATCHED" in explained["answer"]["text"]
    senders = tmp_path / "senders.yaml"
    senders.write_text(
        yaml.safe_dump({"senders": [{"application": "HEMALINK", "default_authority": OID}]})
    )
    resolved = json.loads(cli("explain", "--json", "--senders", str(senders), str(bare)).output)
    assert resolved["items"][0]["patient"]["status"] == "not consulted"


@sqlite_only
def test_explain_a_batch_file(tmp_path: Path) -> None:
    one = (HL7 / "oru-v251-loinc-anc.hl7").read_bytes().rstrip(b"\r\n")
    two = (HL7 / "oru-v24-micro-sign-units.hl7").read_bytes().rstrip(b"\r\n")
    batch = tmp_path / "batch.hl7"
    batch.write_bytes(b"\r".join([b"FHS|^~\\&", b"BHS|^~\\&", one, two, b"BTS|2", b"FTS|1"]))
    items = json.loads(cli("explain", "--json", str(batch)).output)["items"]
    assert len(items) == 2 and items[0]["control_id"] == "MSG0001"


@sqlite_only
def test_explain_fhir_without_a_registry() -> None:
    observation = json.loads(
        cli("explain", "--json", str(FHIR / "observation-anc-per-uL.json")).output
    )
    (item,) = observation["items"]
    assert item["observations"][0]["anc_per_ul"] == 1800
    assert item["answer"]["status"] == 201
    issues = item["answer"]["operation_outcome"]["issue"]
    assert any("1800" in i["diagnostics"] for i in issues)
    order = json.loads(
        cli("explain", "--json", str(FHIR / "medicationrequest-outpatient.json")).output
    )
    assert "no registry was consulted" in order["items"][0]["answer"]["note"]
    bundle = json.loads(
        cli("explain", "--json", str(FHIR / "bundle-transaction-cbc-derived-anc.json")).output
    )
    assert bundle["items"][0]["resource_type"] == "Bundle"
    assert any(a["derived"] for a in bundle["items"][0]["ancs"])


def test_explain_with_a_registry_stores_nothing(db_url: str, service: RemsService) -> None:
    patient = load(service)["P1"]
    before = database_state(db_url)
    files = [
        HL7 / "oru-v251-loinc-anc.hl7",
        HL7 / "rde-v251-inpatient-tq1.hl7",
        HL7 / "oru-v23-bare-mrn.hl7",
        FHIR / "observation-anc-per-uL.json",
        FHIR / "medicationrequest-outpatient.json",
    ]
    at = "2021-12-10T09:00:00+00:00"
    result = cli("explain", "--json", "--db", db_url, "--at", at, *map(str, files))
    assert result.exit_code == 0, result.output
    oru, rde, bare, observation, order = json.loads(result.output)
    assert oru["registry"].startswith("registry consulted")
    assert oru["items"][0]["patient"] == oru["items"][0]["patient"] | {
        "status": "matched",
        "patient": patient,
    }
    assert bare["items"][0]["patient"]["status"] == "unmatched"
    (rde_order,) = rde["items"][0]["orders"]
    assert rde_order["decision"]["outcome"] in ("authorized", "denied", "rationale_required")
    assert "RRE^O12" in rde["items"][0]["answer"]["text"]
    assert observation["items"][0]["patient"]["patient"] == patient
    decision = order["items"][0]["orders"][0]["decision"]
    assert decision["outcome"] and decision["rda"] is None
    assert order["items"][0]["answer"]["operation_outcome"]["issue"][0]["extension"]
    assert database_state(db_url) == before  # rows and audit chain alike


def test_explain_with_a_registry_knows_a_resend(db_url: str, service: RemsService) -> None:
    load(service)
    data = (HL7 / "oru-v251-loinc-anc.hl7").read_bytes()
    sent = run(Hl7Intake(service, SenderDirectory(accept_unknown=True)).receive(data))
    explained = json.loads(
        cli("explain", "--json", "--db", db_url, str(HL7 / "oru-v251-loinc-anc.hl7")).output
    )
    answer = explained["items"][0]["answer"]
    assert answer["disposition"] == "duplicate" and answer["text"] == sent.ack


@sqlite_only
def test_explain_an_order_and_a_refusal_without_a_registry(tmp_path: Path) -> None:
    order = json.loads(cli("explain", "--json", str(HL7 / "omp-v251-cpoe.hl7")).output)
    (item,) = order["items"]
    assert item["orders"] and "decision" not in item["orders"][0]
    assert "no registry was consulted" in item["answer"]["note"]
    senders = tmp_path / "senders.yaml"
    senders.write_text(yaml.safe_dump({"accept_unknown": False, "senders": []}))
    refused = cli("explain", "--senders", str(senders), str(HL7 / "oru-v251-loinc-anc.hl7"))
    assert refused.exit_code == 0
    assert "refused before the store" in refused.output and "UNKNOWN_SENDER" in refused.output
    bad_time = cli("explain", "--at", "yesterday", str(HL7 / "oru-v251-loinc-anc.hl7"))
    assert bad_time.exit_code == 2 and "--at" in bad_time.output
    nowhere = tmp_path / "nowhere.db"
    missing = cli("explain", "--db", f"sqlite:///{nowhere}", str(HL7 / "oru-v251-loinc-anc.hl7"))
    assert missing.exit_code == 2 and not nowhere.exists()  # never created, never migrated


@sqlite_only
def test_explain_refuses_what_is_neither_hl7_nor_fhir(tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    result = cli("explain", str(other))
    assert result.exit_code == 2 and "neither an HL7 v2 message" in result.output


# --- replay --------------------------------------------------------------------------------------


def counts(service: RemsService) -> dict[str, int]:
    def count(store: Any) -> dict[str, int]:
        return {
            name: store.conn.execute(select(func.count()).select_from(table)).scalar_one()
            for name, table in (
                ("observations", tables.ObservationRow.__table__),
                ("ancs", tables.AncResultRow.__table__),
                ("review", tables.ReviewItemRow.__table__),
                ("messages", tables.Hl7MessageRow.__table__),
                ("audit", tables.AuditRecord.__table__),
            )
        }

    return committed(service, count)


def replay_lines(db_url: str, *more: str) -> list[str]:
    result = cli("replay", "--db", db_url, *more)
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def test_replay_files_a_held_message_once_the_registry_knows_the_patient(
    db_url: str, service: RemsService, reads: RemsReads
) -> None:
    load(service, with_patient=False)
    intake = Hl7Intake(service, SenderDirectory(accept_unknown=True))
    data = (HL7 / "oru-v251-loinc-anc.hl7").read_bytes()
    assert run(intake.receive(data)).disposition == "unmatched"
    (held,) = run(reads.review_items(ReviewFilter()))[0]

    first = replay_lines(db_url)
    assert "MSG0001  LAB|GENERAL HOSP  unmatched → unmatched" in first[0]
    assert "still held for review" in first[0] and first[-1].endswith("0 changed, 1 unchanged")

    patient = load(service)["P1"]
    filed = replay_lines(db_url, "--id", "MSG0001")
    assert "unmatched → accepted" in filed[0] and f"filed to {patient}" in filed[0]
    assert run(reads.review_item(held["id"]))["status"] == "linked"
    ancs = committed(service, lambda store: store.anc_results(patient))
    assert sorted(a.anc for a in ancs) == [800, 2100]  # and the enrollment's

    after_first = counts(service)
    again = replay_lines(db_url)
    assert "accepted → accepted" in again[0] and "nothing new stored" in again[0]
    assert counts(service) == after_first  # idempotent: not one row more, audit included


def test_replay_reads_a_message_under_the_current_senders_file(
    db_url: str, service: RemsService, tmp_path: Path
) -> None:
    patient = load(service)["P1"]
    intake = Hl7Intake(service, SenderDirectory(accept_unknown=True))
    run(intake.receive((HL7 / "oru-v23-bare-mrn.hl7").read_bytes()))
    run(intake.receive((HL7 / "oru-v251-loinc-anc.hl7").read_bytes()))
    senders = tmp_path / "senders.yaml"
    senders.write_text(
        yaml.safe_dump(
            {
                "accept_unknown": True,
                "senders": [{"application": "HEMALINK", "default_authority": OID}],
            }
        )
    )
    lines = replay_lines(db_url, "--senders", str(senders), "--disposition", "unmatched")
    assert len(lines) == 2 and "unmatched → accepted" in lines[0]
    ancs = committed(service, lambda store: store.anc_results(patient))
    assert sorted(a.anc for a in ancs) == [800, 2100, 2392]
    kept = committed(
        service,
        lambda store: (
            store.conn.execute(text("select disposition from hl7_message order by id"))
            .scalars()
            .all()
        ),
    )
    assert kept == ["accepted", "accepted"]
    assert "accepted → accepted" in replay_lines(db_url, "--senders", str(senders))[0]


def test_replay_through_the_intake_names_every_message(
    service: RemsService, reads: RemsReads
) -> None:
    """`Hl7Intake.replay_stored_messages` (the console's entry): each message, and progress."""
    load(service)
    intake = Hl7Intake(service, SenderDirectory(accept_unknown=True))
    for name in ("oru-v251-loinc-anc.hl7", "adt-a01-admit.hl7", "oru-no-anc.hl7"):
        run(intake.receive((HL7 / name).read_bytes()))
    from rems_core.store.message_repo import MessageFilter

    stored = run(reads.stored_messages(MessageFilter()))
    seen: list[str] = []
    done = run(
        intake.replay_stored_messages(stored, Source("test", "op"), lambda r: seen.append(r.after))
    )
    assert len(done) == 3 == len(seen)
    assert not any(r.changed for r in done)
    notes = " ".join(r.note for r in done)
    assert "only ORU^R01" in notes or "not kept" in notes


# --- demo, progress ---------------------------------------------------------------------------


@sqlite_only
def test_demo_loads_sends_and_says_what_next(tmp_path: Path) -> None:
    result = cli("demo", "--keep", str(tmp_path / "demo"))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "loaded registry/example.yaml: 1 patient(s)" in out
    assert "oru-v251-loinc-anc.hl7 over the intake: AA (accepted)" in out
    assert "oru-v23-bare-mrn.hl7 over the intake: AA (unmatched)" in out
    assert "medicationrequest-outpatient.json to /fhir: HTTP 201" in out
    for hint in ("rems-gateway serve --db sqlite:///", "rems-gateway send ", "/console", "curl -s"):
        assert hint in out
    assert (tmp_path / "demo" / "demo.db").is_file()
    temporary = cli("demo")
    assert temporary.exit_code == 0 and "--keep DIR" in temporary.output


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_drawn_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())
    with progress_module.progress("files", 3) as advance:
        advance("a")
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with progress_module.progress("files", 3) as advance:
        for label in "abc":
            advance(label)
    assert progress_module.on_terminal()
    assert terminal.getvalue()  # rich drew (and cleared) its bar
