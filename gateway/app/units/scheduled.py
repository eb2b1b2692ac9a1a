"""§8 scheduled work up to a time: overdue labs, labs missed, the end of legacy enrollment, RDAs
past their validity, and each patient's worklist (monthly PSF drafts and tasks).

Runs as several units of work: the housekeeping, then the patients a few dozen at a time (so
that lab results and decisions are not held up behind a whole registry); re-running it for the
same time finds nothing new (restart-safe), so work cut short is simply run again.
"""

from __future__ import annotations

from datetime import datetime

from gateway.app import audit_records
from gateway.app.context import UnitContext
from gateway.app.units import rda, review, worklist
from gateway.app.values import Source
from rems_core import monitoring
from rems_core.codes import Code, finding
from rems_core.model import Finding, PatientSnapshot, PsfType, TreatmentStatus
from rems_core.rulepack import OutOfScope, RulePack
from rems_core.store.repo import Store
from rems_core.worklist import lab_findings


def housekeeping(
    ctx: UnitContext, store: Store, until: datetime, patient_ids: list[str] | None, source: Source
) -> list[str]:
    """The work that is not one patient's: RDAs past their validity expire, kept messages and
    review items past their retention go. Returns the patients to look at next (none before
    the program)."""
    rda.expire(ctx, store, until, source)
    try:
        ctx.pack_for(until)
    except OutOfScope:
        return []
    store.purge_messages(until)  # HL7 messages without results, kept for replay, age out
    review.purge(ctx, store, until, source)  # results of nobody, past their retention
    return patient_ids if patient_ids is not None else store.patient_ids()


def monitoring_alerts(
    ctx: UnitContext, store: Store, until: datetime, patient_ids: list[str], source: Source
) -> dict[str, tuple[Finding, ...]]:
    """What each patient's file shows at ``until``; new alerts are stored and audited, and
    the patient's worklist kept."""
    pack = ctx.pack_for(until)
    found: dict[str, tuple[Finding, ...]] = {}
    for patient_id in patient_ids:
        _patient_alerts(ctx, store, pack, patient_id, until, source, found)
        worklist.refresh(ctx, store, patient_id, until, source)
    return found


def _patient_alerts(
    ctx: UnitContext,
    store: Store,
    pack: RulePack,
    patient_id: str,
    until: datetime,
    source: Source,
    found: dict[str, tuple[Finding, ...]],
) -> None:
    tz = ctx.tz
    patient = store.patient(patient_id)
    snapshot = store.snapshot(patient)
    status, _ = monitoring.treatment_status(pack, snapshot, until, tz)
    if status == TreatmentStatus.NOT_ENROLLED:
        ended = _end_legacy_enrollment(store, pack, snapshot, until)
        if ended is not None:
            found[patient_id] = (ended,)
            store.append_audit(
                audit_records.scheduled(ctx.now(), source, patient_id, (ended,), until)
            )
        return
    newest = monitoring.newest_usable(snapshot, until)
    findings = lab_findings(pack, snapshot, until, tz)
    new = [
        item
        for item in findings
        if _record_once(store, patient_id, item, until, newest.drawn if newest else None)
    ]
    if new:
        store.append_audit(
            audit_records.scheduled(ctx.now(), source, patient_id, tuple(new), until)
        )
    found[patient_id] = tuple(findings)


def _record_once(
    store: Store, patient_id: str, item: Finding, until: datetime, newest: datetime | None
) -> bool:
    """One alert per episode: a new one only after a newer ANC ended the previous episode."""
    latest = store.latest_alert(patient_id, item.code)
    if latest is None or (newest is not None and latest < newest):
        store.add_alert(patient_id, item.code, until, item.text)
        return True
    return False


def _end_legacy_enrollment(
    store: Store, pack: RulePack, snapshot: PatientSnapshot, until: datetime
) -> Finding | None:
    """§8: after the re-enrollment deadline a legacy patient becomes not enrolled (once)."""
    patient = snapshot.patient
    re_enrolled = any(p.form.type == PsfType.ENROLLMENT for p in snapshot.accepted_psfs)
    if patient is None or not patient.legacy_enrolled or re_enrolled:
        return None
    if store.latest_alert(patient.rems_id, Code.LEGACY_ENROLLMENT_ENDED) is not None:
        return None
    deadline = pack.reenrollment_deadline.value.isoformat()
    ended = finding(Code.LEGACY_ENROLLMENT_ENDED, deadline=deadline)
    store.add_alert(patient.rems_id, ended.code, until, ended.text)
    store.add_status_event(
        patient.rems_id,
        until,
        TreatmentStatus.ACTIVE.value,
        TreatmentStatus.NOT_ENROLLED.value,
        "scheduler",
        f"not re-enrolled by {deadline}",
    )
    return ended
