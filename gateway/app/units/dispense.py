"""Dispense decisions inside the service's units of work (docs/rules.md §6): the request id's
earlier answer, the pharmacist override's ANC, the decision, and its RDA and override rows."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import datetime

from gateway.app import audit_records
from gateway.app.context import UnitContext
from gateway.app.errors import RequestConflict
from gateway.app.units import labs, notifications
from gateway.app.units.notifications import DECISION_TOPIC, Event
from gateway.app.values import Source
from mappings.fhir.etasu import decision_response
from rems_core.dispense import decide
from rems_core.model import (
    AncResult,
    Decision,
    DispenseRequest,
    Identifier,
    Patient,
    PsfType,
    decision_from_dict,
    to_plain,
)
from rems_core.rda import RdaState
from rems_core.rulepack import RulePack
from rems_core.store.repo import Store


def with_enrolling_prescriber(
    store: Store, identifiers: list[Identifier], request: DispenseRequest
) -> DispenseRequest:
    """An order naming no prescriber is the patient's enrolling prescriber's: the prescriber of
    the accepted enrollment PSF ("" when there is none)."""
    if request.prescriber_npi:
        return request
    patient = store.find_patient(identifiers)
    if patient is None:
        return request
    accepted = store.snapshot(patient, [], []).accepted_psfs
    enrollments = [p for p in accepted if p.form.type == PsfType.ENROLLMENT]
    npi = enrollments[0].form.prescriber_npi if enrollments else ""
    return replace(request, prescriber_npi=npi)


def request_hash(identifiers: list[Identifier], request: DispenseRequest) -> str:
    """What makes two requests with one request id the same request: patient and body."""
    body = to_plain(request)
    body.pop("dispense_date")  # a retry later in the day is still the same request
    body["patient"] = sorted((i.system, i.value) for i in identifiers)
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def decide_dispense(
    ctx: UnitContext,
    store: Store,
    identifiers: list[Identifier],
    request: DispenseRequest,
    source: Source,
    pack: RulePack,
) -> Decision:
    digest = request_hash(identifiers, request)
    if request.request_id:
        earlier = store.decision_for_request(request.request_id)
        if earlier is not None:
            if earlier[0] != digest:
                raise RequestConflict(
                    f"request id {request.request_id!r} was used for a different request"
                )
            return decision_from_dict(earlier[1])
    patient = store.find_patient(identifiers)
    override_anc = _override_anc(ctx, store, patient, request, source)
    snapshot = store.snapshot(patient, [request.prescriber_npi], [request.pharmacy_npi])
    decision = decide(pack, request, snapshot, ctx.tz, ctx.ids, override_anc)
    decision = replace(decision, decision_id=ctx.ids.new_id("dec"))
    decided_at = ctx.now()
    _record_decision(ctx, store, request, decision, digest, source, decided_at)
    store.append_audit(
        audit_records.dispense(decided_at, source, identifiers, request, decision, digest)
    )
    return decision


def _override_anc(
    ctx: UnitContext,
    store: Store,
    patient: Patient | None,
    request: DispenseRequest,
    source: Source,
) -> AncResult | None:
    if request.override is None or request.override.anc is None:
        return None
    stored = labs.store_reported_ancs(
        ctx, store, patient, (request.override.anc,), request.dispense_date, source
    )
    return stored[0] if stored else None


def _record_decision(
    ctx: UnitContext,
    store: Store,
    request: DispenseRequest,
    decision: Decision,
    digest: str,
    source: Source,
    decided_at: datetime,
) -> None:
    store.add_decision(
        {
            "id": decision.decision_id,
            "request_id": request.request_id,
            "request_hash": digest,
            "patient_id": decision.patient,
            "at": request.dispense_date,
            "decided_at": decided_at,
            "rule_pack": decision.rule_pack,
            "rule_pack_version": decision.rule_pack_version,
            "outcome": decision.outcome.value,
            "result": decision.as_dict(),
            "request": to_plain(request),
            "channel": source.channel,
            "actor": source.actor,
        }
    )
    if decision.rda is not None:
        rda = decision.rda
        store.add_rda(
            {
                "number": rda.number,
                "decision_id": decision.decision_id,
                "patient_id": decision.patient,
                "pharmacy_npi": rda.pharmacy_npi,
                "prescriber_npi": rda.prescriber_npi,
                "max_days_supply": rda.max_days_supply,
                "valid_until": rda.valid_until,
                "state": RdaState.ISSUED.value,
                "state_why": "",
            }
        )
    if decision.override_used and decision.patient and request.override:
        store.add_override(
            {
                "patient_id": decision.patient,
                "decision_id": decision.decision_id,
                "at": request.dispense_date,
                "pharmacy_npi": request.pharmacy_npi,
                "prescriber_npi": request.override.prescriber_npi or "",
                "rationale": request.override.rationale or "",
            }
        )
    if notifications.listened(store, DECISION_TOPIC):  # else not even the focus is built
        notifications.publish(ctx, store, _decision_event(decision, decided_at))


def _decision_event(decision: Decision, decided_at: datetime) -> Event:
    """A decision as its subscribers hear of it: the GuidanceResponse of the stored decision."""
    attributes = {"outcome": decision.outcome.value}
    if decision.patient:
        attributes["patient"] = f"Patient/{decision.patient}"
    focus = f"GuidanceResponse/{decision.decision_id}"
    return Event(DECISION_TOPIC, focus, decision_response(decision, decided_at), attributes)
