"""ADT messages and the registry (docs/contracts.md §4): identifiers added to a known patient, a
merge or change of identifier, held for review when it would join two registry patients.
Demographics are never copied; a patient the registry does not know leaves nothing stored."""

from __future__ import annotations

from datetime import datetime

from gateway.app.context import UnitContext
from gateway.app.units import identity, review
from gateway.app.values import LabOutcome, Source
from mappings.hl7v2.adt import AdtEvent, AdtPatient
from rems_core.codes import Code, finding
from rems_core.identity import Candidate, resolved
from rems_core.model import Finding
from rems_core.store.repo import Store

IGNORED = LabOutcome(None, ())


def apply(
    ctx: UnitContext, store: Store, event: AdtEvent, source: Source, received: datetime
) -> LabOutcome:
    """What the event did: the registry patient it was about (None: nobody the registry knows,
    or held for review), and its findings."""
    if event.kind == "other":
        return IGNORED
    outcomes = [_apply_one(ctx, store, event, p, source, received) for p in event.patients]
    done = [o for o in outcomes if o.patient is not None or o.review_id is not None]
    if not done:
        return IGNORED
    warnings = tuple(w for o in done for w in o.warnings)
    first = done[0]
    return LabOutcome(first.patient, (), warnings, first.review_id)


def disposition(outcome: LabOutcome) -> str:
    if outcome.review_id is not None:
        return "held"
    return "accepted" if outcome.patient is not None else "ignored"


def _apply_one(
    ctx: UnitContext,
    store: Store,
    event: AdtEvent,
    patient: AdtPatient,
    source: Source,
    received: datetime,
) -> LabOutcome:
    current = identity.match(store, patient.candidates)
    prior = identity.match(store, patient.prior) if event.kind == "merge" else identity.Match(())
    if current.ambiguous or prior.ambiguous:
        both = [*patient.candidates, *patient.prior]
        ids = {p.rems_id for p in (*current.patients, *prior.patients)}
        return _hold(ctx, store, identity.AMBIGUOUS, both, sorted(ids), source, received)
    named = {p.rems_id: p for p in (*current.patients, *prior.patients)}
    if len(named) > 1:  # two enrolled files: enrollments, PSFs and overrides would combine
        both = [*patient.candidates, *patient.prior]
        ids = [p.rems_id for p in (*current.patients, *prior.patients)]
        return _hold(ctx, store, identity.MERGE, both, ids, source, received)
    if not named:
        return IGNORED
    (survivor,) = named.values()
    identifiers = resolved([*patient.candidates, *patient.prior])
    review.attach(ctx, store, survivor, identifiers, source, received)
    return LabOutcome(survivor.rems_id, ())


def _hold(
    ctx: UnitContext,
    store: Store,
    kind: str,
    candidates: list[Candidate],
    patients: list[str],
    source: Source,
    received: datetime,
) -> LabOutcome:
    code = Code.PATIENT_MERGE_REVIEW if kind == identity.MERGE else Code.PATIENT_AMBIGUOUS
    warning: Finding = finding(code)
    held = identity.Held(
        kind,
        candidates,
        source,
        received,
        (warning,),
        patients=patients,
        message=source.message_ref,
    )
    return LabOutcome(None, (), (warning,), identity.hold(ctx, store, held))
