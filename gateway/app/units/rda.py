"""The RDA's life inside the service's units of work (docs/rules.md §6.4): an order's end voids
its RDA, a dispense is recorded against it (or refused), and the scheduler expires it. Every
change of state is an audit record; a resend is answered from the store."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from gateway.app import audit_records
from gateway.app.context import UnitContext
from gateway.app.values import OrderEnded, Source
from rems_core.audit import digest
from rems_core.codes import Code, finding
from rems_core.model import Finding, to_plain
from rems_core.rda import (
    DispenseFiled,
    DispenseOutcome,
    DispenseRecord,
    IssuedRda,
    OrderEnd,
    RdaState,
    dispense_refusals,
)
from rems_core.store.repo import Store


def _change(
    ctx: UnitContext,
    store: Store,
    issued: IssuedRda,
    state: RdaState,
    at: datetime,
    why: str,
    source: Source,
) -> None:
    store.set_rda_state(issued.rda.number, state, at, why)
    store.append_audit(audit_records.rda_change(ctx.now(), source, issued, state, at, why))


# --- an order's end ------------------------------------------------------------------------


def end_order(ctx: UnitContext, store: Store, end: OrderEnd, source: Source) -> OrderEnded:
    """The order whose request id ``end`` names: its RDA voided, if it is still issued."""
    if store.decision_for_request(end.request_id) is None:
        return order_not_found(end.request_id)
    return void(ctx, store, store.rda_for_request(end.request_id), end, source)


def order_not_found(order: str) -> OrderEnded:
    return OrderEnded(False, False, findings=(finding(Code.ORDER_NOT_FOUND, order=order),))


def void(
    ctx: UnitContext, store: Store, issued: IssuedRda | None, end: OrderEnd, source: Source
) -> OrderEnded:
    """A known order ended: its RDA (None: the decision issued none) is voided while it is
    still issued; a dispensed or expired one keeps its state, a voided one stays voided (the
    same end again answers the same)."""
    if issued is None:
        return OrderEnded(True, False)
    number, state = issued.rda.number, issued.state_at(end.at)
    if state == RdaState.ISSUED:
        _change(ctx, store, issued, RdaState.VOIDED, end.at, f"order {end.action.value}", source)
        state = RdaState.VOIDED
    return OrderEnded(True, state == RdaState.VOIDED, number, state)


# --- dispense records ----------------------------------------------------------------------


def record_dispense(
    ctx: UnitContext, store: Store, record: DispenseRecord, source: Source
) -> DispenseFiled:
    """A dispense a pharmacy reports, against the RDA it names (by number, else by its order's
    request id). Not clozapine (no RxNorm code of the packs' clozapine list): ignored, nothing
    stored."""
    if record.drug not in ctx.lab_pack().clozapine_rxnorm.value:
        return DispenseFiled(DispenseOutcome.IGNORED)
    content = digest(to_plain(record))
    earlier = store.dispense_record_like(content)
    if earlier is not None:
        return _answered_again(store, earlier, record.dispensed_at)
    issued = _named_rda(store, record)
    if issued is None:
        named = record.rda or record.request_id or "none named"
        warning = finding(Code.DISPENSE_WITHOUT_RDA, named=named)
        filed = DispenseFiled(
            DispenseOutcome.RECORDED, (), (warning,), None, None, ctx.ids.new_id("dsp")
        )
        _store_record(ctx, store, record, source, filed, None, content)
        return filed
    reasons = dispense_refusals(issued, record)
    outcome = DispenseOutcome.REFUSED if reasons else DispenseOutcome.RECORDED
    number, state = issued.rda.number, issued.state_at(record.dispensed_at)
    filed = DispenseFiled(outcome, reasons, (), number, state, ctx.ids.new_id("dsp"))
    _store_record(ctx, store, record, source, filed, issued.rda.patient or None, content)
    if outcome == DispenseOutcome.REFUSED:
        return filed
    why = f"dispense_record/{filed.record_id}"
    _change(ctx, store, issued, RdaState.DISPENSED, record.dispensed_at, why, source)
    return replace(filed, rda_state=RdaState.DISPENSED)


def _named_rda(store: Store, record: DispenseRecord) -> IssuedRda | None:
    if record.rda:
        return store.rda(record.rda)
    if record.request_id:
        return store.rda_for_request(record.request_id)
    return None


def _answered_again(store: Store, row: dict[str, Any], at: datetime) -> DispenseFiled:
    """The stored answer to a dispense record sent again, with its RDA's state now."""
    outcome = DispenseOutcome(row["outcome"])
    findings = tuple(Finding(f["code"], f["text"]) for f in row["findings"] or [])
    refused = outcome == DispenseOutcome.REFUSED
    number = row["rda_number"]
    issued = store.rda(number) if number else None
    state = issued.state_at(at) if issued is not None else None
    reasons, warnings = (findings, ()) if refused else ((), findings)
    return DispenseFiled(outcome, reasons, warnings, number, state, row["id"], again=True)


def _store_record(
    ctx: UnitContext,
    store: Store,
    record: DispenseRecord,
    source: Source,
    filed: DispenseFiled,
    patient: str | None,
    content: str,
) -> None:
    assert filed.record_id is not None
    store.add_dispense_record(
        {
            "id": filed.record_id,
            "rda_number": filed.rda,  # a known RDA only: a number nobody issued is in the warning
            "request_id": record.request_id,
            "patient_id": patient,
            "drug": record.drug,
            "quantity": str(record.quantity) if record.quantity is not None else None,
            "days_supply": record.days_supply,
            "dispensed_at": record.dispensed_at,
            "recorded_at": ctx.now(),
            "pharmacy_npi": record.pharmacy_npi,
            "channel": source.channel,
            "actor": source.actor,
            "outcome": filed.outcome.value,
            "findings": [f.as_dict() for f in (*filed.reasons, *filed.warnings)],
            "content_hash": content,
        }
    )
    entry = audit_records.dispense_record(
        ctx.now(), source, filed.record_id, patient, content, record.dispensed_at, filed
    )
    store.append_audit(entry)


# --- expiry ------------------------------------------------------------------------------


def expire(ctx: UnitContext, store: Store, until: datetime, source: Source) -> int:
    """Every RDA still issued whose validity ended by ``until`` becomes expired (as of the end
    of its validity); run again for the same time, it finds none."""
    expired = store.rdas_issued_until(until)
    for issued in expired:
        _change(
            ctx, store, issued, RdaState.EXPIRED, issued.rda.valid_until, "validity ended", source
        )
    return len(expired)
