"""Dispense decisions over FHIR: a MedicationRequest decided and stored with its decision in one
unit of work, and the read-only `$rems-etasu` check.

The decision goes through ``dispense_unit.decide_dispense``, as the service's own
``decide_dispense`` does: the same rules, the same idempotency per request id, the same audit
record and RDA.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from gateway.app.context import UnitContext
from gateway.app.errors import RequestConflict, UnknownPatient, UnknownResource
from gateway.app.units import dispense as dispense_unit
from gateway.app.units import rda as rda_unit
from gateway.app.units.fhir_records import existing, put
from gateway.app.values import (
    DispenseRecorded,
    DispenseSubmission,
    MedicationDispenseRecorded,
    MedicationDispenseSubmission,
    MedicationRequestEnd,
    MedicationRequestEnded,
    Recorded,
    Source,
)
from mappings.fhir.etasu import EtasuCheck, EtasuQuery
from mappings.fhir.medication_dispense import (
    decision_id_of,
    prescription_of,
    with_original_decision,
    with_outcome,
)
from mappings.fhir.medication_request import with_decision
from rems_core.dispense import decide, discharge_cap, evaluate
from rems_core.model import (
    Decision,
    DispenseRequest,
    Identifier,
    Outcome,
    PatientSnapshot,
    decision_from_dict,
)
from rems_core.rda import OrderEnd
from rems_core.rulepack import RulePack
from rems_core.store.fhir_repo import StoredResource
from rems_core.store.repo import Store


def record_medication_request(
    ctx: UnitContext,
    store: Store,
    submission: DispenseSubmission,
    source: Source,
    pack: RulePack,
) -> DispenseRecorded:
    """Decide and store the MedicationRequest version carrying the decision. The same resource
    again is answered from the store; the same identifier with another body is a conflict."""
    identifiers = list(submission.patient_identifiers)
    if submission.patient_id is not None:
        patient = store.patient(submission.patient_id)
        if patient is None:
            return DispenseRecorded(None, None)
        identifiers = list(patient.identifiers)
    draft = submission.draft
    current = existing(store, draft)
    if current is not None:
        if current.content_hash != draft.content_hash:
            raise RequestConflict("this identifier was used for a different MedicationRequest")
        stored = store.decision_for_request(submission.request.request_id or "")
        decision = decision_from_dict(stored[1]) if stored is not None else None
        return DispenseRecorded(Recorded(current, False, True), decision)
    request = submission.request
    decision = dispense_unit.decide_dispense(ctx, store, identifiers, request, source, pack)
    draft = replace(draft, index=replace(draft.index, patient_id=decision.patient))
    recorded = put(
        ctx, store, draft, request.dispense_date, lambda body: with_decision(body, decision)
    )
    return DispenseRecorded(recorded, decision)


# --- $rems-etasu: a check that records nothing ---------------------------------------------------


class _NoRda:
    """A check issues no RDA: only a recorded dispense decision does."""

    def rda_number(self) -> str:
        return ""


def etasu(ctx: UnitContext, store: Store, query: EtasuQuery, pack: RulePack | None) -> EtasuCheck:
    """The decision a case number names, else the check of the query's dispense (``pack``: the
    pack of its dispense date)."""
    if query.case_number is not None:
        return stored_decision(store, query.case_number, query.at)
    assert query.subject is not None and query.request is not None and pack is not None
    identifiers: list[Identifier] = list(query.subject.identifiers)
    if query.subject.patient_id is not None:
        patient = store.patient(query.subject.patient_id)
        if patient is None:
            raise UnknownPatient(query.subject.patient_id)
        identifiers = list(patient.identifiers)
    return check_etasu(ctx, store, identifiers, query.request, pack)


def stored_decision(store: Store, case_number: str, at: datetime | None) -> EtasuCheck:
    """The decision an RDA number or a decision id names, with its RDA's state at ``at``."""
    result = store.decision_by_case_number(case_number)
    if result is None:
        return EtasuCheck(None, stored=True)
    decision = decision_from_dict(result)
    issued = store.rda_of_decision(decision.decision_id) if decision.rda is not None else None
    reported = _reported(decision)
    if issued is None:
        return reported
    state = issued.state_at(at) if at is not None else issued.state
    return replace(reported, rda_state=state)


def _reported(decision: Decision) -> EtasuCheck:
    denied = decision.reasons if decision.outcome == Outcome.DENIED else ()
    needed = decision.reasons if decision.outcome == Outcome.RATIONALE_REQUIRED else ()
    return EtasuCheck(decision, True, denied, needed)


def check_etasu(
    ctx: UnitContext,
    store: Store,
    identifiers: list[Identifier],
    request: DispenseRequest,
    pack: RulePack,
    snapshot: PatientSnapshot | None = None,
) -> EtasuCheck:
    """A request already decided (same request id and body) is reported; any other is judged by
    the engine on the committed patient file, without an override, and nothing is stored.
    ``snapshot``: that file read already, for the patient the identifiers name (with this
    request's prescriber and pharmacy among others)."""
    if request.request_id:
        earlier = store.decision_for_request(request.request_id)
        if earlier is not None and earlier[0] == dispense_unit.request_hash(identifiers, request):
            return _reported(decision_from_dict(earlier[1]))
    request = replace(request, override=None)
    if snapshot is None:
        patient = store.find_patient(identifiers)
        snapshot = store.snapshot(patient, [request.prescriber_npi], [request.pharmacy_npi])
    decision = replace(decide(pack, request, snapshot, ctx.tz, _NoRda()), rda=None)
    checks = evaluate(pack, request, snapshot, None, ctx.tz)
    cap = discharge_cap(pack, request, snapshot, ctx.tz)
    supply_given = request.days_supply > 0  # a check may leave the supply out: 0 days
    if not supply_given:  # no maximum of 0 days: the discharge limit, if one applies, else none
        decision = replace(decision, max_days_supply=cap)
    denials, rationale = tuple(checks.denials), tuple(checks.rationale)
    return EtasuCheck(decision, False, denials, rationale, None, cap, supply_given)


# --- the RDA's life over FHIR -------------------------------------------------------------------


def record_medication_dispense(
    ctx: UnitContext, store: Store, submission: MedicationDispenseSubmission, source: Source
) -> MedicationDispenseRecorded:
    """File the dispense against the RDA its authorizing prescription names, and store the
    MedicationDispense with what became of it (the same resource again: the stored answer)."""
    record = submission.record
    if submission.prescription is not None:
        ordered = store.current_resource("MedicationRequest", submission.prescription)
        rda, request = prescription_of(ordered.body) if ordered is not None else (None, None)
        named = f"MedicationRequest/{submission.prescription}"
        record = replace(record, rda=rda, request_id=request or named)
    filed = rda_unit.record_dispense(ctx, store, record, source)
    draft = submission.draft
    if filed.rda is not None:
        draft = replace(
            draft, index=replace(draft.index, patient_id=_rda_patient(store, filed.rda))
        )
    recorded = put(
        ctx,
        store,
        draft,
        record.dispensed_at,
        lambda body: with_outcome(body, filed),
        owner=source.actor,  # a resend without an identifier is found by its content
    )
    return MedicationDispenseRecorded(recorded, filed)


def _rda_patient(store: Store, number: str) -> str | None:
    issued = store.rda(number)
    return issued.rda.patient or None if issued is not None else None


def end_medication_request(
    ctx: UnitContext, store: Store, end: MedicationRequestEnd, source: Source
) -> MedicationRequestEnded:
    """The MedicationRequest's next version keeps the original's decision; the RDA of that
    decision is voided. The same update again changes nothing and answers the same."""
    current = _ended_request(store, end)
    if current is None:
        order = prescription_of(end.draft.body)[1] or "none named"
        return MedicationRequestEnded(None, rda_unit.order_not_found(order))
    request_id = prescription_of(current.body)[1]
    if prescription_of(end.draft.body)[1] != request_id:
        raise RequestConflict("an update may not change the request id (identifier)")
    decision_id = decision_id_of(current.body)
    issued = store.rda_of_decision(decision_id) if decision_id else None
    order = OrderEnd(request_id or f"MedicationRequest/{current.id}", end.action, end.at)
    ended = rda_unit.void(ctx, store, issued, order, source)
    index = replace(end.draft.index, patient_id=current.patient_id)
    draft = replace(end.draft, index=index, resource_id=current.id)
    recorded = put(
        ctx, store, draft, end.at, lambda body: with_original_decision(body, current.body)
    )
    return MedicationRequestEnded(recorded, ended)


def _ended_request(store: Store, end: MedicationRequestEnd) -> StoredResource | None:
    """The MedicationRequest an end names: by id (raises UnknownResource), else by identifier."""
    if end.resource_id is not None:
        current = store.current_resource("MedicationRequest", end.resource_id)
        if current is None:
            raise UnknownResource(f"MedicationRequest/{end.resource_id}")
        return current
    identifier = end.draft.index.identifier
    return store.resource_by_identifier("MedicationRequest", identifier) if identifier else None
