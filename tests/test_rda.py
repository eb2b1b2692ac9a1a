"""The RDA's life (docs/rules.md §6.4) through the application service, on SQLite and
PostgreSQL: an order's end voids it, it is dispensed at most once, within its validity and its
days supply, it expires, and every change of state is an audit record."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine

from gateway.app.service import RemsService
from rems_core.audit import AuditEntry
from rems_core.model import Decision, Rda
from rems_core.rda import (
    DispenseOutcome,
    DispenseRecord,
    IssuedRda,
    OrderAction,
    OrderEnd,
    RdaState,
    dispense_refusals,
)
from rems_core.store import tables
from tests.builders import PHARMACY, at, dispense
from tests.conftest import committed, run
from tests.test_service import MRN, SOURCE, count, registry


@pytest.fixture
def authorized(service: RemsService) -> Decision:
    """An outpatient RDA for 30 days, decided 2022-03-02 12:00 (valid 7 days), order RX-1."""
    run(service.load_registry(registry(), SOURCE))
    decision = run(service.decide_dispense(MRN, dispense("2022-03-02", request_id="RX-1"), SOURCE))
    assert decision.rda is not None
    return decision


def record(rda: str | None, when: str = "2022-03-03T09:00", **fields: object) -> DispenseRecord:
    values: dict[str, object] = {
        "rda": rda,
        "request_id": None,
        "drug": "197536",
        "quantity": Decimal("60"),
        "days_supply": 30,
        "dispensed_at": at(when),
        "pharmacy_npi": PHARMACY,
    }
    return DispenseRecord(**(values | fields))  # type: ignore[arg-type]


def audit(service: RemsService, kind: str) -> list[AuditEntry]:
    return [e for e in committed(service, lambda s: list(s.audit_records())) if e.kind == kind]


def state(service: RemsService, number: str) -> IssuedRda:
    found = committed(service, lambda s: s.rda(number))
    assert found is not None
    return found


# --- the rules, pure ---------------------------------------------------------------------------

RDA = Rda("RDA-X", at("2022-03-09"), "P1", PHARMACY, "1234567893", 30)


@pytest.mark.parametrize(
    ("issued", "dispensed", "codes"),
    [
        (IssuedRda(RDA, "dec-1"), record("RDA-X"), []),
        (IssuedRda(RDA, "dec-1"), record("RDA-X", "2022-03-09T12:01"), ["RDA_EXPIRED"]),
        (IssuedRda(RDA, "dec-1"), record("RDA-X", days_supply=31), ["RDA_SUPPLY_EXCEEDED"]),
        (
            IssuedRda(RDA, "dec-1", RdaState.DISPENSED, at("2022-03-03")),
            record("RDA-X"),
            ["RDA_ALREADY_DISPENSED"],
        ),
        (
            IssuedRda(RDA, "dec-1", RdaState.VOIDED, at("2022-03-03")),
            record("RDA-X", days_supply=40),
            ["RDA_VOIDED", "RDA_SUPPLY_EXCEEDED"],
        ),
        (
            IssuedRda(RDA, "dec-1", RdaState.EXPIRED, at("2022-03-10")),
            record("RDA-X"),
            ["RDA_EXPIRED"],
        ),
    ],
)
def test_the_refusals_of_a_dispense(
    issued: IssuedRda, dispensed: DispenseRecord, codes: list[str]
) -> None:
    assert [f.code for f in dispense_refusals(issued, dispensed)] == codes


def test_an_issued_rda_past_its_validity_reads_as_expired() -> None:
    issued = IssuedRda(RDA, "dec-1")
    assert issued.state_at(RDA.valid_until) == RdaState.ISSUED
    assert issued.state_at(RDA.valid_until + timedelta(seconds=1)) == RdaState.EXPIRED


# --- through the service ------------------------------------------------------------------------


def test_a_dispense_is_recorded_once_per_rda(service: RemsService, authorized: Decision) -> None:
    assert authorized.rda is not None
    number = authorized.rda.number
    first = run(service.record_dispense(record(number), SOURCE))
    assert (first.outcome, first.rda, first.rda_state) == (
        DispenseOutcome.RECORDED,
        number,
        RdaState.DISPENSED,
    )
    assert first.reasons == first.warnings == ()
    second = run(service.record_dispense(record(number, "2022-03-04T09:00"), SOURCE))
    assert second.outcome == DispenseOutcome.REFUSED
    assert [r.code for r in second.reasons] == ["RDA_ALREADY_DISPENSED"]
    assert state(service, number).state == RdaState.DISPENSED
    assert state(service, number).changed_at == at("2022-03-03T09:00")


def test_the_same_dispense_again_answers_the_stored_outcome(
    service: RemsService, authorized: Decision, engine: Engine
) -> None:
    assert authorized.rda is not None
    sent = record(authorized.rda.number)
    first = run(service.record_dispense(sent, SOURCE))
    again = run(service.record_dispense(sent, SOURCE))
    assert again.again and not first.again
    assert (again.outcome, again.reasons, again.record_id) == (
        first.outcome,
        first.reasons,
        first.record_id,
    )
    assert again.rda_state == RdaState.DISPENSED
    assert count(engine, tables.DispenseRecordRow) == 1
    assert len(audit(service, "rda")) == 1


def test_an_rda_is_found_by_its_orders_request_id(
    service: RemsService, authorized: Decision
) -> None:
    filed = run(service.record_dispense(record(None, request_id="RX-1"), SOURCE))
    assert authorized.rda is not None
    assert (filed.outcome, filed.rda) == (DispenseOutcome.RECORDED, authorized.rda.number)


def test_a_dispense_beyond_the_authorized_days_supply_is_refused(
    service: RemsService, authorized: Decision
) -> None:
    assert authorized.rda is not None
    filed = run(service.record_dispense(record(authorized.rda.number, days_supply=31), SOURCE))
    assert filed.outcome == DispenseOutcome.REFUSED
    assert [r.code for r in filed.reasons] == ["RDA_SUPPLY_EXCEEDED"]
    assert "at most 30 days" in filed.reasons[0].text
    assert filed.rda_state == RdaState.ISSUED  # refused: still there to be dispensed right
    assert run(service.record_dispense(record(authorized.rda.number), SOURCE)).outcome == (
        DispenseOutcome.RECORDED
    )


def test_cancelling_the_order_voids_its_rda(service: RemsService, authorized: Decision) -> None:
    assert authorized.rda is not None
    number = authorized.rda.number
    end = OrderEnd("RX-1", OrderAction.CANCEL, at("2022-03-02T15:00"))
    ended = run(service.end_order(end, SOURCE))
    assert (ended.known, ended.voided, ended.rda, ended.rda_state) == (
        True,
        True,
        number,
        RdaState.VOIDED,
    )
    assert run(service.end_order(end, SOURCE)) == ended  # the same cancel again
    assert state(service, number).why == "order cancel"
    filed = run(service.record_dispense(record(number), SOURCE))
    assert [r.code for r in filed.reasons] == ["RDA_VOIDED"]
    changes = audit(service, "rda")
    assert [(e.outcome, e.subject, e.input_ref) for e in changes] == [
        ("voided", authorized.patient, f"rda/{number}")
    ]


def test_ending_an_order_never_decided_is_order_not_found(
    service: RemsService, authorized: Decision
) -> None:
    ended = run(
        service.end_order(OrderEnd("RX-9", OrderAction.DISCONTINUE, at("2022-03-02")), SOURCE)
    )
    assert (ended.known, ended.voided, ended.rda) == (False, False, None)
    assert [f.code for f in ended.findings] == ["ORDER_NOT_FOUND"]


def test_ending_an_order_after_its_dispense_leaves_the_rda_dispensed(
    service: RemsService, authorized: Decision
) -> None:
    assert authorized.rda is not None
    run(service.record_dispense(record(authorized.rda.number), SOURCE))
    ended = run(
        service.end_order(OrderEnd("RX-1", OrderAction.DISCONTINUE, at("2022-03-05")), SOURCE)
    )
    assert (ended.known, ended.voided, ended.rda_state) == (True, False, RdaState.DISPENSED)


def test_an_rda_expires_by_the_scheduler_and_reads_expired_before(
    service: RemsService, authorized: Decision
) -> None:
    assert authorized.rda is not None
    number = authorized.rda.number
    late = record(number, "2022-03-10T09:00")
    assert state(service, number).state_at(late.dispensed_at) == RdaState.EXPIRED
    refused = run(service.record_dispense(late, SOURCE))
    assert [r.code for r in refused.reasons] == ["RDA_EXPIRED"]
    assert refused.rda_state == RdaState.EXPIRED
    assert state(service, number).state == RdaState.ISSUED  # not stored until the job runs
    run(service.run_scheduled(at("2022-03-09T12:00")))  # at the end of validity: still issued
    assert state(service, number).state == RdaState.ISSUED
    run(service.run_scheduled(at("2022-03-10")))
    run(service.run_scheduled(at("2022-03-11")))  # restart-safe: no second change
    expired = state(service, number)
    assert (expired.state, expired.changed_at) == (RdaState.EXPIRED, authorized.rda.valid_until)
    assert [e.outcome for e in audit(service, "rda")] == ["expired"]
    assert audit(service, "rda")[0].channel == "scheduler"


def test_a_clozapine_dispense_without_a_known_rda_is_recorded_with_a_warning(
    service: RemsService, authorized: Decision, engine: Engine
) -> None:
    filed = run(service.record_dispense(record("RDA-NOBODY"), SOURCE))
    assert (filed.outcome, filed.rda, filed.rda_state) == (DispenseOutcome.RECORDED, None, None)
    assert [w.code for w in filed.warnings] == ["DISPENSE_WITHOUT_RDA"]
    assert "RDA-NOBODY" in filed.warnings[0].text
    (entry,) = audit(service, "dispense_record")
    assert (entry.outcome, entry.warnings) == ("recorded", ("DISPENSE_WITHOUT_RDA",))
    assert count(engine, tables.DispenseRecordRow) == 1


def test_a_dispense_of_another_drug_is_ignored(
    service: RemsService, authorized: Decision, engine: Engine
) -> None:
    assert authorized.rda is not None
    number = authorized.rda.number
    filed = run(service.record_dispense(record(number, drug="310965"), SOURCE))
    assert (filed.outcome, filed.record_id) == (DispenseOutcome.IGNORED, None)
    assert count(engine, tables.DispenseRecordRow) == 0
    assert state(service, number).state == RdaState.ISSUED


def test_every_dispense_and_transition_is_audited(
    service: RemsService, authorized: Decision
) -> None:
    assert authorized.rda is not None
    number = authorized.rda.number
    run(service.record_dispense(record(number), SOURCE))
    run(service.record_dispense(replace(record(number), days_supply=14), SOURCE))
    records = audit(service, "dispense_record")
    assert [(e.outcome, e.reasons) for e in records] == [
        ("recorded", ()),
        ("refused", ("RDA_ALREADY_DISPENSED",)),
    ]
    assert all(e.subject == authorized.patient for e in records)
    (change,) = audit(service, "rda")
    assert (change.outcome, change.clinical_at) == ("dispensed", at("2022-03-03T09:00"))
