"""The application service on a real SQLite database: storage, idempotency, serialization."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, NoReturn

import pytest
from sqlalchemy import Engine, func, select

from gateway.app.bootstrap import bootstrap
from gateway.app.context import UnitContext
from gateway.app.errors import RequestConflict
from gateway.app.service import RemsService
from gateway.app.values import Source
from rems_core.model import (
    AncCategory,
    Decision,
    Designation,
    Identifier,
    LabResult,
    Outcome,
    Override,
    PatientStatusForm,
    PsfType,
    Rationale,
    ReportedAnc,
    ResultStatus,
    SubmitterRole,
)
from rems_core.registry import PatientEntry, RegistryConflict, RegistryDocument
from rems_core.store import tables
from rems_core.store.repo import Store
from tests.builders import PHARMACY, PRESCRIBER, at, dispense
from tests.conftest import PACKS, run

SOURCE = Source("test", "pytest")
MRN = [Identifier("urn:oid:2.16.840.1.113883.3.999.1", "MRN123")]


def registry(certified: bool = True, enrolled_on: str = "2022-03-01") -> RegistryDocument:
    return RegistryDocument.model_validate(
        {
            "prescribers": [
                {"npi": PRESCRIBER, "certified": certified, "designees": [{"id": "D1"}]}
            ],
            "pharmacies": [
                {
                    "npi": PHARMACY,
                    "enrollments": [
                        {"setting": "inpatient", "certified": True},
                        {"setting": "outpatient", "certified": True},
                    ],
                }
            ],
            "patients": [
                {
                    "id": "P1",
                    "identifiers": [{"system": MRN[0].system, "value": "MRN123"}],
                    "name": {"family": "Doe", "given": "Jane"},
                    "treatment_start": "2020-01-01",
                    "enrollment": {
                        "by": PRESCRIBER,
                        "date": enrolled_on,
                        "anc": {"value": "2100", "unit": "/uL", "drawn": "2022-02-28"},
                    },
                }
            ],
        }
    )


def count(engine: Engine, table: type) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table.__table__)).scalar_one()


def test_loading_the_registry_twice_is_idempotent(service: RemsService, engine: Engine) -> None:
    first = run(service.load_registry(registry(), SOURCE))
    second = run(service.load_registry(registry(), SOURCE))
    assert first == second
    assert count(engine, tables.PsfRow) == 1
    assert count(engine, tables.PatientRow) == 1


def test_a_decertification_is_an_update(service: RemsService) -> None:
    run(service.load_registry(registry(), SOURCE))
    assert (
        run(service.decide_dispense(MRN, dispense("2022-03-02"), SOURCE)).outcome
        == Outcome.AUTHORIZED
    )
    run(service.load_registry(registry(certified=False), SOURCE))
    decision = run(service.decide_dispense(MRN, dispense("2022-03-02"), SOURCE))
    assert {r.code for r in decision.reasons} == {"PRESCRIBER_NOT_CERTIFIED"}


def test_a_self_contradicting_registry_is_refused_whole(
    service: RemsService, engine: Engine
) -> None:
    doc = registry()
    doc = doc.model_copy(
        update={
            "prescribers": [
                *doc.prescribers,
                doc.prescribers[0].model_copy(update={"certified": False}),
            ]
        }
    )
    with pytest.raises(RegistryConflict, match=PRESCRIBER):
        run(service.load_registry(doc, SOURCE))
    assert count(engine, tables.PrescriberRow) == 0


def test_the_same_request_id_returns_the_same_rda(service: RemsService, engine: Engine) -> None:
    run(service.load_registry(registry(), SOURCE))
    request = dispense("2022-03-02", request_id="req-1")
    first = run(service.decide_dispense(MRN, request, SOURCE))
    again = run(
        service.decide_dispense(MRN, replace(request, dispense_date=at("2022-03-02T15:00")), SOURCE)
    )
    assert first.rda is not None and again.rda is not None
    assert again.rda.number == first.rda.number and again.decision_id == first.decision_id
    assert count(engine, tables.RdaRow) == 1


def test_the_same_request_id_with_another_body_is_a_conflict(
    service: RemsService, engine: Engine
) -> None:
    run(service.load_registry(registry(), SOURCE))
    run(service.decide_dispense(MRN, dispense("2022-03-02", request_id="req-1"), SOURCE))
    with pytest.raises(RequestConflict, match="req-1"):
        run(
            service.decide_dispense(
                MRN, dispense("2022-03-02", request_id="req-1", days_supply=14), SOURCE
            )
        )
    assert count(engine, tables.RdaRow) == 1


def test_parallel_complete_overrides_authorize_exactly_three(
    service: RemsService, engine: Engine
) -> None:
    run(service.load_registry(registry(enrolled_on="2022-01-01"), SOURCE))
    override = Override(PRESCRIBER, ReportedAnc("2000", "/uL", at("2022-03-01")), "PSF on its way")

    async def sixteen() -> list:
        requests = [
            dispense("2022-03-02", override=override, request_id=f"r{i}") for i in range(16)
        ]
        return await asyncio.gather(*(service.decide_dispense(MRN, r, SOURCE) for r in requests))

    decisions = run(sixteen())
    outcomes = [d.outcome for d in decisions]
    assert outcomes.count(Outcome.AUTHORIZED) == 3
    assert all(
        {r.code for r in d.reasons} == {"PSF_OUT_OF_WINDOW", "OVERRIDE_LIMIT_REACHED"}
        for d in decisions
        if d.outcome == Outcome.DENIED
    )
    assert count(engine, tables.OverrideRow) == 3


def test_concurrent_work_is_group_committed(service: RemsService) -> None:
    run(service.load_registry(registry(), SOURCE))

    async def many() -> None:
        await asyncio.gather(
            *(service.decide_dispense(MRN, dispense("2022-03-02"), SOURCE) for _ in range(64))
        )

    before = service.writer.commits
    run(many())
    assert service.writer.units >= 65
    assert service.writer.commits - before < 64


def lab(
    value: str, status: ResultStatus = ResultStatus.FINAL, specimen: str = "ACC-1"
) -> LabResult:
    return LabResult("751-8", value, "/uL", at("2022-03-02T08:00"), status, specimen)


def test_a_correction_replaces_the_earlier_value(service: RemsService) -> None:
    run(service.load_registry(registry(), SOURCE))
    run(service.ingest_labs(MRN, [lab("900")], SOURCE, at("2022-03-02T09:00")))
    assert (
        run(service.decide_dispense(MRN, dispense("2022-03-03"), SOURCE)).outcome
        == Outcome.RATIONALE_REQUIRED
    )
    run(
        service.ingest_labs(
            MRN, [lab("1900", ResultStatus.CORRECTED)], SOURCE, at("2022-03-02T10:00")
        )
    )
    assert (
        run(service.decide_dispense(MRN, dispense("2022-03-03"), SOURCE)).outcome
        == Outcome.AUTHORIZED
    )


def test_a_cancellation_withdraws_the_earlier_value(service: RemsService) -> None:
    run(service.load_registry(registry(), SOURCE))
    run(service.ingest_labs(MRN, [lab("900")], SOURCE, at("2022-03-02T09:00")))
    outcome = run(
        service.ingest_labs(MRN, [lab("", ResultStatus.CANCELLED)], SOURCE, at("2022-03-02T10:00"))
    )
    assert [w.code for r in outcome.results for w in r.warnings] == ["RESULT_CANCELLED"]
    assert (
        run(service.decide_dispense(MRN, dispense("2022-03-03"), SOURCE)).outcome
        == Outcome.AUTHORIZED
    )


def test_a_correction_of_a_derivation_input_re_derives(service: RemsService) -> None:
    run(service.load_registry(registry(), SOURCE))
    drawn = at("2022-03-02T08:00")
    wbc = LabResult("6690-2", "2.0", "10*3/uL", drawn, specimen="ACC-9")
    neut = LabResult("770-8", "40", "%", drawn, specimen="ACC-9")
    first = run(service.ingest_labs(MRN, [wbc, neut], SOURCE, drawn))
    assert [r.anc for r in first.results] == [800]
    fixed = run(
        service.ingest_labs(
            MRN, [replace(wbc, value="4.0", status=ResultStatus.CORRECTED)], SOURCE, drawn
        )
    )
    assert [r.anc for r in fixed.results] == [1600]


def test_an_unmatched_lab_is_kept_for_review(service: RemsService, engine: Engine) -> None:
    outcome = run(
        service.ingest_labs([Identifier("urn:x", "NOPE")], [lab("2000")], SOURCE, at("2022-03-02"))
    )
    assert not outcome.matched and [w.code for w in outcome.warnings] == ["PATIENT_NOT_MATCHED"]
    assert count(engine, tables.ObservationRow) == 0  # nobody's file holds it
    with engine.connect() as conn:
        item = conn.execute(select(tables.ReviewItemRow.__table__)).one()
    assert (item.id, item.kind, item.status) == (outcome.review_id, "unmatched", "open")
    assert [r["value"] for r in item.results] == ["2000"]


def test_a_failing_unit_of_work_rolls_back_alone(service: RemsService, engine: Engine) -> None:
    patient_id = run(service.load_registry(registry(), SOURCE))["P1"]

    def boom(store: Store) -> NoReturn:
        store.add_alert(patient_id, "X", at("2022-03-02"), "")
        raise RuntimeError("boom")

    async def both() -> tuple[BaseException, Decision | BaseException]:
        bad = service.writer.run(boom)
        good = service.decide_dispense(MRN, dispense("2022-03-02"), SOURCE)
        return await asyncio.gather(bad, good, return_exceptions=True)

    bad, good = run(both())
    assert isinstance(bad, RuntimeError) and good.outcome == Outcome.AUTHORIZED
    assert count(engine, tables.MonitoringAlert) == 0


def test_the_migrations_create_exactly_the_models(db_url: str) -> None:
    from alembic import command

    from rems_core.store.db import alembic_config

    command.check(alembic_config(db_url))  # raises when models and migrations differ


def monthly_psf(submitted: str, **fields: Any) -> PatientStatusForm:
    return PatientStatusForm(
        type=PsfType.MONTHLY,
        submitted_at=at(submitted),
        submitter=PRESCRIBER,
        role=SubmitterRole.PRESCRIBER,
        prescriber_npi=PRESCRIBER,
        signed=True,
        **fields,
    )


def test_a_psf_reports_what_the_lab_rules_said_of_its_ancs(service: RemsService) -> None:
    run(service.load_registry(registry(), SOURCE))
    form = monthly_psf("2022-03-05", anc=(ReportedAnc("1.5", "/uL", at("2022-03-04")),))
    outcome = run(service.submit_psf(MRN, form, SOURCE))
    assert outcome.accepted and "ANC_UNIT_SUSPECT" in {w.code for w in outcome.warnings}


def test_a_re_sent_result_is_the_same_result_not_a_new_one(service: RemsService) -> None:
    run(service.load_registry(registry(), SOURCE))
    low = ReportedAnc("800", "/uL", at("2022-03-04T08:00"))
    rationale = Rationale("benefit_outweighs_risk", "stable")
    assert run(
        service.submit_psf(MRN, monthly_psf("2022-03-05", anc=(low,), rationale=rationale), SOURCE)
    ).accepted
    resent = LabResult("751-8", "0.8", "10*3/uL", low.drawn, specimen="ACC-7")
    outcome = run(service.ingest_labs(MRN, [resent], SOURCE, at("2022-03-06")))
    assert [r.anc for r in outcome.results] == [800]
    assert run(service.submit_psf(MRN, monthly_psf("2022-03-07"), SOURCE)).accepted


def test_a_designees_psf_without_a_prescriber_is_for_the_one_it_acts_for(
    service: RemsService,
) -> None:
    run(service.load_registry(registry(), SOURCE))
    form = replace(
        monthly_psf("2022-03-05"),
        submitter="D1",
        role=SubmitterRole.DESIGNEE,
        prescriber_npi="D1",
        signed=False,
    )
    assert run(service.submit_psf(MRN, form, SOURCE)).accepted


def with_second_patient(service: RemsService) -> tuple[RegistryDocument, PatientEntry]:
    """The registry with a second patient, P2 (MRN999), loaded."""
    doc = registry()
    first = doc.patients[0]
    other = first.model_copy(
        update={
            "id": "P2",
            "identifiers": [first.identifiers[0].model_copy(update={"value": "MRN999"})],
        }
    )
    run(service.load_registry(doc.model_copy(update={"patients": [*doc.patients, other]}), SOURCE))
    return doc, other


def test_one_request_id_for_another_patient_is_a_conflict(
    service: RemsService, engine: Engine
) -> None:
    with_second_patient(service)
    run(service.decide_dispense(MRN, dispense("2022-03-02", request_id="req-9"), SOURCE))
    with pytest.raises(RequestConflict):
        run(
            service.decide_dispense(
                [Identifier(MRN[0].system, "MRN999")],
                dispense("2022-03-02", request_id="req-9"),
                SOURCE,
            )
        )
    assert count(engine, tables.RdaRow) == 1


def test_a_preliminary_after_the_final_never_replaces_it(service: RemsService) -> None:
    run(service.load_registry(registry(), SOURCE))
    run(service.ingest_labs(MRN, [lab("900")], SOURCE, at("2022-03-02T09:00")))
    late = run(
        service.ingest_labs(
            MRN, [lab("2000", ResultStatus.PRELIMINARY)], SOURCE, at("2022-03-02T10:00")
        )
    )
    assert [w.code for r in late.results for w in r.warnings] == ["RESULT_PRELIMINARY"]
    decision = run(service.decide_dispense(MRN, dispense("2022-03-03"), SOURCE))
    assert decision.outcome == Outcome.RATIONALE_REQUIRED


def test_an_accepted_ben_designation_changes_the_thresholds(service: RemsService) -> None:
    run(service.load_registry(registry(), SOURCE))
    ben = monthly_psf("2022-03-05", designation=Designation.BEN)
    assert run(service.submit_psf(MRN, ben, SOURCE)).accepted
    run(service.ingest_labs(MRN, [lab("800")], SOURCE, at("2022-03-06")))
    assert (
        run(service.decide_dispense(MRN, dispense("2022-03-06T12:00"), SOURCE)).outcome
        == Outcome.AUTHORIZED
    )


def audit_of(engine: Engine, kind: str) -> list[tuple[str | None, str, str]]:
    with engine.connect() as conn:
        return [
            (r.subject, r.outcome, r.input_ref)
            for r in Store(conn).audit_records()
            if r.kind == kind
        ]


def test_registry_upkeep_updates_and_audits_each_change(
    service: RemsService, engine: Engine
) -> None:
    ids = run(service.load_registry(registry(), SOURCE))
    first = audit_of(engine, "registry")
    assert (PRESCRIBER, "inserted", "certified,certified_on,dea,email,name") in first
    doc = registry(certified=False)
    prescriber = doc.prescribers[0].model_copy(update={"designees": []})
    pharmacy = doc.pharmacies[0]
    pharmacy = pharmacy.model_copy(
        update={
            "enrollments": [
                pharmacy.enrollments[0],
                pharmacy.enrollments[1].model_copy(update={"certified": False}),
            ]
        }
    )
    patient = doc.patients[0]
    patient = patient.model_copy(
        update={
            "identifiers": [
                *patient.identifiers,
                patient.identifiers[0].model_copy(
                    update={"system": "urn:oid:1.2.3.4", "value": "EPI-77"}
                ),
            ]
        }
    )
    doc = doc.model_copy(
        update={"prescribers": [prescriber], "pharmacies": [pharmacy], "patients": [patient]}
    )
    assert run(service.load_registry(doc, SOURCE)) == ids
    changes = audit_of(engine, "registry")[len(first) :]
    assert (PRESCRIBER, "updated", "certified") in changes
    assert ("D1", "detached", PRESCRIBER) in changes
    assert (f"{PHARMACY}/outpatient", "updated", "certified") in changes
    assert (ids["P1"], "identifier added", "urn:oid:1.2.3.4") in changes
    assert all("EPI-77" not in str(change) for change in changes)  # no identifier values
    assert run(service.load_registry(doc, SOURCE)) == ids
    assert audit_of(engine, "registry")[len(first) + len(changes) :] == []  # nothing changed


def test_an_entry_naming_two_known_patients_is_refused_whole(
    service: RemsService, engine: Engine
) -> None:
    doc, other = with_second_patient(service)
    merged = doc.patients[0].model_copy(
        update={"identifiers": [*doc.patients[0].identifiers, *other.identifiers]}
    )
    before = count(engine, tables.AuditRecord)
    with pytest.raises(RegistryConflict, match="2 different patients"):
        run(
            service.load_registry(
                doc.model_copy(update={"prescribers": [], "patients": [merged]}), SOURCE
            )
        )
    assert count(engine, tables.AuditRecord) == before


def test_a_designation_changed_by_another_writer_is_read_anew(
    service: RemsService, db_url: str
) -> None:
    """Writers keep registry reads between batches; a PSF's designation change made by another
    writer (another process) bumps the registry version, so the first one reads the patient anew."""
    run(service.load_registry(registry(), SOURCE))
    first = run(service.ingest_labs(MRN, [lab("800")], SOURCE, at("2022-03-02T09:00")))
    assert [r.category for r in first.results] == [AncCategory.MODERATE]
    with bootstrap(db_url, UnitContext(PACKS, rules="clozapine-rems-2021")) as other:
        ben = monthly_psf("2022-03-05", designation=Designation.BEN)
        assert run(other.service.submit_psf(MRN, ben, SOURCE)).accepted
    later = replace(lab("800", specimen="ACC-2"), drawn=at("2022-03-06T08:00"))
    again = run(service.ingest_labs(MRN, [later], SOURCE, at("2022-03-06")))
    assert [r.category for r in again.results] == [AncCategory.BEN_NEUTROPENIA]


def test_a_message_stored_earlier_in_the_batch_is_found_by_its_control_id(
    engine: Engine,
) -> None:
    """Message rows are written once per batch; a resend later in the same batch must still be
    recognised (the dedup read looks at the batch's unwritten rows too)."""
    row = {
        "sender": "LAB|HOSP",
        "control_id": "MSG1",
        "content_hash": "h1",
        "message_type": "ORU^R01",
        "received": at("2022-03-02T09:00"),
        "raw": b"MSH|...",
        "ack": "MSA|AA|MSG1",
        "disposition": "accepted",
        "patient_id": None,
        "purge_after": None,
    }
    with engine.connect() as conn, conn.begin():
        store = Store(conn, defer=True)
        store.lock_chain_head()
        store.add_message(row)
        assert store.message_by_control_id("LAB|HOSP", "MSG1") == ("h1", "MSA|AA|MSG1")
        assert store.message_by_control_id("LAB|HOSP", "MSG2") is None
        store.flush_chain_head()
        assert count_in(conn, tables.Hl7MessageRow) == 1


def count_in(conn: Any, table: type) -> int:
    return conn.execute(select(func.count()).select_from(table)).scalar_one()
