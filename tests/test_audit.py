"""docs/rules.md §9: append-only, hash-chained audit records; `audit verify` finds tampering."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine, exc, insert, text

from gateway.app.audit_trail import ChainBroken, verify_database, write_checkpoint
from gateway.app.service import RemsService
from gateway.app.values import Source
from rems_core.audit import ChainHead, chained, columns, record_hash
from rems_core.store.repo import Store, audit_t
from tests.builders import at, dispense
from tests.conftest import run
from tests.test_service import MRN, lab, registry

SOURCE = Source("test", "auditor-test")


def some_history(service: RemsService) -> None:
    run(service.load_registry(registry(), SOURCE))
    run(service.ingest_labs(MRN, [lab("2000")], SOURCE, at("2022-03-02T09:00")))
    run(service.decide_dispense(MRN, dispense("2022-03-03"), SOURCE))
    run(service.decide_dispense(MRN, dispense("2022-03-04", pharmacy_npi="1999999984"), SOURCE))


def tamper(engine: Engine, *statements: str) -> None:
    """What an intruder with database rights does: switch off the append-only guard, then edit."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ALTER TABLE audit_record DISABLE TRIGGER USER")
            conn.exec_driver_sql("ALTER TABLE audit_head DISABLE TRIGGER USER")
        else:
            for trigger in (
                "audit_record_no_update",
                "audit_record_no_delete",
                "audit_head_forward_only",
            ):
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {trigger}")
        for statement in statements:
            conn.execute(text(statement))


def head_seq(engine: Engine) -> int:
    with engine.connect() as conn:
        return Store(conn).chain_head().seq


def test_every_decision_and_change_is_chained(
    service: RemsService, db_url: str, engine: Engine
) -> None:
    some_history(service)
    problem, head = verify_database(db_url)
    assert problem is None
    with engine.connect() as conn:
        records = list(Store(conn).audit_records())
    assert [r.seq for r in records] == list(range(1, head.seq + 1))
    kinds = [r.kind for r in records]
    assert {"registry", "lab", "dispense"} <= set(kinds)
    denied = [r for r in records if r.kind == "dispense" and r.outcome == "denied"]
    assert denied and denied[0].reasons == ("PHARMACY_NOT_CERTIFIED",)
    assert denied[0].rule_pack == "clozapine-rems-2021" and denied[0].actor == "auditor-test"
    assert all(record_hash(r) == r.hash for r in records)


def test_audit_records_cannot_be_changed_or_deleted(service: RemsService, engine: Engine) -> None:
    some_history(service)
    for statement in ("UPDATE audit_record SET outcome = 'authorized'", "DELETE FROM audit_record"):
        with pytest.raises(exc.DatabaseError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))


def test_an_edited_record_is_found(service: RemsService, db_url: str, engine: Engine) -> None:
    some_history(service)
    seq = head_seq(engine)
    tamper(engine, f"UPDATE audit_record SET outcome = 'authorized' WHERE seq = {seq}")
    problem, _ = verify_database(db_url)
    assert problem is not None and problem.seq == seq and "edited" in problem.problem


def test_a_deleted_record_is_found(service: RemsService, db_url: str, engine: Engine) -> None:
    some_history(service)
    tamper(engine, "DELETE FROM audit_record WHERE seq = 3")
    problem, _ = verify_database(db_url)
    assert problem is not None and problem.seq == 3 and "missing" in problem.problem


def test_a_record_inserted_in_the_middle_is_found(
    service: RemsService, db_url: str, engine: Engine
) -> None:
    some_history(service)
    # Make room after record 2 and slip a forged record in, correctly linked to record 2.
    tamper(
        engine,
        "UPDATE audit_record SET seq = -seq WHERE seq > 2",
        "UPDATE audit_record SET seq = 1 - seq WHERE seq < 0",
        "INSERT INTO audit_record SELECT 3, at, clinical_at, kind, channel, actor, subject, input_hash, "
        "input_ref, rule_pack, rule_pack_version, 'authorized', reasons, warnings, hash, 'forged' "
        "FROM audit_record WHERE seq = 2",
    )
    with engine.begin() as conn:
        store = Store(conn)
        forged = next(r for r in store.audit_records() if r.seq == 3)
        conn.execute(
            text("UPDATE audit_record SET hash = :h WHERE seq = 3"), {"h": record_hash(forged)}
        )
    problem, _ = verify_database(db_url)
    assert problem is not None and problem.seq == 4


def test_a_record_appended_behind_the_heads_back_is_found(
    service: RemsService, db_url: str, engine: Engine
) -> None:
    some_history(service)
    with engine.connect() as conn:
        store = Store(conn)
        last = list(store.audit_records())[-1]
    forged = chained(replace(last, outcome="authorized"), ChainHead(last.seq, last.hash))
    with engine.begin() as conn:
        conn.execute(insert(audit_t), columns(forged))  # linked and hashed like a real record
    problem, _ = verify_database(db_url)
    assert (
        problem is not None
        and problem.seq == last.seq + 1
        and "beyond the chain head" in problem.problem
    )


def test_the_chain_head_only_moves_forward_and_the_table_cannot_be_truncated(
    service: RemsService, engine: Engine
) -> None:
    some_history(service)
    with pytest.raises(exc.DatabaseError, match="only moves forward"), engine.begin() as conn:
        conn.execute(text("UPDATE audit_head SET seq = 1"))
    if engine.dialect.name == "postgresql":
        with pytest.raises(exc.DatabaseError, match="append-only"), engine.begin() as conn:
            conn.execute(text("TRUNCATE audit_record"))


def test_times_with_an_offset_hash_as_stored(service: RemsService, db_url: str) -> None:
    from datetime import datetime, timedelta, timezone

    some_history(service)
    eastern = datetime(2022, 3, 10, 7, 0, tzinfo=timezone(timedelta(hours=-5)))
    run(service.run_scheduled(eastern))
    assert verify_database(db_url)[0] is None


def test_no_checkpoint_of_a_broken_chain(
    service: RemsService, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    some_history(service)
    tamper(engine, "UPDATE audit_record SET actor = 'x' WHERE seq = 2")
    with pytest.raises(ChainBroken):
        write_checkpoint(db_url, tmp_path / "head.json")
    assert not (tmp_path / "head.json").exists()


def test_a_truncation_that_rewrote_the_head_is_found_by_the_checkpoint(
    service: RemsService, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    some_history(service)
    checkpoint = tmp_path / "audit-checkpoint.json"
    head = write_checkpoint(db_url, checkpoint)
    with engine.connect() as conn:
        kept = next(r for r in Store(conn).audit_records() if r.seq == head.seq - 2)
    tamper(
        engine,
        f"DELETE FROM audit_record WHERE seq > {kept.seq}",
        f"UPDATE audit_head SET seq = {kept.seq}, hash = '{kept.hash}'",
    )
    assert verify_database(db_url)[0] is None  # the chain alone looks whole
    problem, _ = verify_database(db_url, ChainHead(head.seq, head.hash))
    assert problem is not None and problem.seq == head.seq and "truncated" in problem.problem


def test_a_truncation_that_left_the_head_is_found(
    service: RemsService, db_url: str, engine: Engine
) -> None:
    some_history(service)
    seq = head_seq(engine)
    tamper(engine, f"DELETE FROM audit_record WHERE seq > {seq - 2}")
    problem, _ = verify_database(db_url)
    assert problem is not None and problem.seq == seq - 1


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60
    )


def test_audit_verify_and_checkpoint_from_the_command_line(
    service: RemsService, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    some_history(service)
    checkpoint = tmp_path / "head.json"
    written = cli("audit", "checkpoint", "--out", str(checkpoint), "--db", db_url)
    assert written.returncode == 0 and json.loads(checkpoint.read_text())["seq"] == head_seq(engine)
    intact = cli("audit", "verify", "--db", db_url, "--checkpoint", str(checkpoint))
    assert intact.returncode == 0 and "audit chain intact" in intact.stdout
    assert re.search(r"checked in \d+\.\d s, [\d,]+ records/s", intact.stdout)
    tamper(engine, "UPDATE audit_record SET actor = 'someone else' WHERE seq = 2")
    broken = cli("audit", "verify", "--db", db_url)
    assert broken.returncode == 1
    assert "audit record 2: its content does not match its hash (edited)" in broken.stderr
