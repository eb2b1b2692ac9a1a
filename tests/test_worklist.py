"""The monthly paperwork done from the labs (docs/rules.md §5.6, §8; docs/contracts.md §7): the PSF
drafted before it is due and updated as labs arrive, tasks opened once per occurrence and
closed when their condition clears — through the service, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from gateway.app.bootstrap import bootstrap
from gateway.app.reads import RemsReads
from gateway.app.service import RemsService
from gateway.app.values import Source
from rems_core.model import (
    Identifier,
    LabResult,
    PatientStatusForm,
    PsfType,
    Rationale,
    SubmitterRole,
    TreatmentStatus,
)
from rems_core.registry import RegistryDocument
from rems_core.store import tables
from rems_core.store.db import upgrade
from rems_core.store.review_repo import ReviewFilter
from rems_core.store.worklist_repo import TaskFilter
from tests.builders import DESIGNEE, PRESCRIBER, at
from tests.conftest import run
from tests.test_cli import cli

MRN = [Identifier("urn:oid:1.2.3", "MRN1")]
LAB = Source("hl7", "LAB|GH")


def registry(designation: str = "general") -> RegistryDocument:
    return RegistryDocument.model_validate(
        {
            "prescribers": [
                {"npi": PRESCRIBER, "certified": True, "designees": [{"id": DESIGNEE}]}
            ],
            "patients": [
                {
                    "id": "P1",
                    "identifiers": [{"system": "urn:oid:1.2.3", "value": "MRN1"}],
                    "designation": designation,
                    "treatment_start": "2020-01-01",  # monthly monitoring by the phase
                    "enrollment": {
                        "by": PRESCRIBER,
                        "date": "2022-01-28",
                        "anc": {"value": "2100", "unit": "/uL", "drawn": "2022-01-28"},
                    },
                }
            ],
        }
    )


def open_tasks(reads: RemsReads, patient: str) -> set[str]:
    rows, _ = run(reads.task_rows(TaskFilter(patient_id=patient, status="requested")))
    return {row["kind"] for row in rows}


def drafts(engine: Engine) -> list[dict[str, Any]]:
    table = tables.PsfDraftRow.__table__
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(table).order_by(table.c.due))]


def versions(engine: Engine, resource_id: str) -> list[dict[str, Any]]:
    table = tables.FhirResourceRow.__table__
    with engine.connect() as conn:
        rows = conn.execute(
            select(table.c.body).where(table.c.id == resource_id).order_by(table.c.version_id)
        )
        return [r.body for r in rows]


def items(body: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for item in body["item"]:
        found.setdefault(item["linkId"], []).append(item)
    return found


def lab(value: str, drawn: str) -> LabResult:
    return LabResult("751-8", value, "10*3/uL", at(drawn))


def monthly(submitted: str, **fields: Any) -> PatientStatusForm:
    return PatientStatusForm(
        PsfType.MONTHLY,
        at(submitted),
        PRESCRIBER,
        SubmitterRole.PRESCRIBER,
        PRESCRIBER,
        signed=True,
        **fields,
    )


def test_the_draft_appears_seven_days_before_it_is_due_and_follows_the_labs(
    service: RemsService, reads: RemsReads, engine: Engine
) -> None:
    ids = run(service.load_registry(registry(), Source("test")))
    patient = ids["P1"]
    run(service.run_scheduled(at("2022-02-20")))  # due 02-28: not yet
    assert drafts(engine) == []
    assert open_tasks(reads, patient) == set()
    run(service.run_scheduled(at("2022-02-21")))
    (draft,) = drafts(engine)
    assert (draft["due"], draft["period_start"], draft["status"]) == (
        date(2022, 2, 28),
        date(2022, 1, 28),
        "open",
    )
    assert open_tasks(reads, patient) == {"psf-due"}
    first = versions(engine, draft["id"])
    assert [v["status"] for v in first] == ["in-progress"]
    assert items(first[0])["due-date"][0]["answer"] == [{"valueDate": "2022-02-28"}]
    assert "anc" not in items(first[0])  # the enrollment ANC is the previous period's

    run(service.run_scheduled(at("2022-02-22")))  # nothing new: no new version
    assert len(versions(engine, draft["id"])) == 1
    run(service.ingest_labs(MRN, [lab("0.8", "2022-02-23T08:00")], LAB, at("2022-02-23T09:00")))
    latest = versions(engine, draft["id"])[-1]
    assert len(versions(engine, draft["id"])) == 2  # the lab changed what it pre-fills
    (anc,) = items(latest)["anc"]
    parts = {p["linkId"]: p["answer"][0] for p in anc["item"]}
    assert parts["anc.value"]["valueQuantity"]["value"] == 800
    assert parts["anc.category"]["valueCoding"]["code"] == "moderate"
    assert items(latest)["rationale-needed"][0]["answer"] == [{"valueBoolean": True}]
    assert items(latest)["recommended-frequency"][0]["answer"][0]["valueCoding"]["code"] == (
        "three_times_weekly"
    )
    assert open_tasks(reads, patient) == {"psf-due", "rationale-required"}


def test_tasks_close_when_the_condition_clears_and_never_reopen(
    service: RemsService, reads: RemsReads
) -> None:
    ids = run(service.load_registry(registry(), Source("test")))
    patient = ids["P1"]
    run(service.run_scheduled(at("2022-02-27")))  # 30 days after the PSF: the window reminder
    assert open_tasks(reads, patient) == {"psf-due", "psf-window-closing"}
    run(service.run_scheduled(at("2022-02-28")))  # the ANC of 01-28 is 31 days old
    assert open_tasks(reads, patient) == {
        "psf-due",
        "psf-window-closing",
        "anc-overdue",
        "labs-missed",
        "rationale-required",
    }
    run(service.ingest_labs(MRN, [lab("2.4", "2022-03-01T08:00")], LAB, at("2022-03-01T09:00")))
    assert open_tasks(reads, patient) == {"psf-due", "psf-window-closing"}
    assert run(service.submit_psf(MRN, monthly("2022-03-02"), Source("test"))).accepted
    assert open_tasks(reads, patient) == set()
    rows, total = run(reads.task_rows(TaskFilter(patient_id=patient)))
    assert total == 5 and {r["status"] for r in rows} == {"completed"}
    run(service.run_scheduled(at("2022-03-03")))  # the same occurrences are not opened again
    assert run(reads.task_rows(TaskFilter(patient_id=patient)))[1] == 5


def test_a_psf_accepted_without_the_draft_stops_it(
    service: RemsService, engine: Engine, reads: RemsReads
) -> None:
    ids = run(service.load_registry(registry(), Source("test")))
    run(service.run_scheduled(at("2022-02-22")))
    assert run(service.submit_psf(MRN, monthly("2022-02-23"), Source("test"))).accepted
    (draft,) = drafts(engine)
    assert draft["status"] == "withdrawn"
    assert [v["status"] for v in versions(engine, draft["id"])] == ["in-progress", "stopped"]
    assert open_tasks(reads, ids["P1"]) == set()
    run(service.run_scheduled(at("2022-03-16")))  # the next period's draft: due 03-23
    assert [d["due"] for d in drafts(engine)] == [date(2022, 2, 28), date(2022, 3, 23)]


def test_a_designees_rationale_waits_for_the_signature(
    service: RemsService, reads: RemsReads
) -> None:
    ids = run(service.load_registry(registry(), Source("test")))
    form = PatientStatusForm(
        PsfType.MONTHLY,
        at("2022-02-10"),
        DESIGNEE,
        SubmitterRole.DESIGNEE,
        PRESCRIBER,
        rationale=Rationale("benefit_outweighs_risk", "stable for years"),
    )
    held = run(service.submit_psf(MRN, form, Source("test")))
    assert held.status.value == "pending_prescriber_signature"
    assert open_tasks(reads, ids["P1"]) == {"signature-pending"}
    rows, _ = run(reads.task_rows(TaskFilter(patient_id=ids["P1"])))
    assert rows[0]["owner_npi"] == PRESCRIBER and not rows[0]["designee_may"]
    signed = run(service.sign_psf(MRN, PRESCRIBER, at("2022-02-11"), Source("test")))
    assert signed.accepted
    assert open_tasks(reads, ids["P1"]) == set()


def test_interrupted_treatment_cancels_the_paperwork(
    service: RemsService, reads: RemsReads
) -> None:
    ids = run(service.load_registry(registry(), Source("test")))
    run(service.run_scheduled(at("2022-02-28")))
    assert "psf-due" in open_tasks(reads, ids["P1"])
    form = monthly("2022-03-01", treatment_status=TreatmentStatus.INTERRUPTED)
    assert run(service.submit_psf(MRN, form, Source("test"))).accepted
    rows, _ = run(reads.task_rows(TaskFilter(patient_id=ids["P1"])))
    assert {r["status"] for r in rows} == {"cancelled"}
    assert all(r["closed_why"] == "treatment is interrupted" for r in rows)


def test_a_result_of_nobody_is_the_operators_task(service: RemsService, reads: RemsReads) -> None:
    run(service.load_registry(registry(), Source("test")))
    stranger = [Identifier("urn:oid:1.2.3", "NOBODY")]
    run(service.ingest_labs(stranger, [lab("2.0", "2022-02-01T08:00")], LAB, at("2022-02-01")))
    rows, _ = run(reads.task_rows(TaskFilter(kind="unmatched-result")))
    assert [(r["status"], r["owner_npi"], r["patient_id"]) for r in rows] == [
        ("requested", None, None)
    ]
    (item,) = run(reads.review_items(ReviewFilter()))[0]
    run(service.discard_review(item["id"], "a test sample", Source("test"), at("2022-02-02")))
    rows, _ = run(reads.task_rows(TaskFilter(kind="unmatched-result")))
    assert rows[0]["status"] == "cancelled"


def test_the_prescribers_tasks_at_the_terminal(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'tasks.db'}"
    upgrade(db)
    with bootstrap(db) as gateway:
        patient = run(gateway.service.load_registry(registry(), Source("test")))["P1"]
        run(gateway.service.run_scheduled(at("2022-02-28")))
    listed = cli("tasks", "--prescriber", PRESCRIBER, "--db", db)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert lines[-1] == "5 tasks"
    assert all(patient in line and f"owner {PRESCRIBER}" in line for line in lines[:-1])
    assert any("psf-due  requested" in line and "due 2022-02-28" in line for line in lines)
    assert cli("tasks", "--prescriber", "1245319599", "--db", db).stdout.strip() == "0 tasks"
    assert cli("tasks", "--kind", "psf-late", "--db", db).returncode == 2
    assert cli("tasks", "--status", "completed", "--db", db).stdout.strip() == "0 tasks"
