"""A registry patient as the edges show it: demographics, and the REMS status at a moment
(`Patient/{id}/$rems-status`), computed by the monitoring rules (§3, §5–§7) from a snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo

from rems_core import monitoring
from rems_core.model import (
    AncResult,
    Identifier,
    MonitoringFrequency,
    PatientSnapshot,
    PsfStatus,
    PsfType,
    StoredPsf,
    TreatmentStatus,
)
from rems_core.rulepack import RulePack


@dataclass(frozen=True)
class PatientRecord:
    rems_id: str
    identifiers: tuple[Identifier, ...]
    family: str = ""
    given: str = ""
    birth_date: date | None = None
    sex: str | None = None


@dataclass(frozen=True)
class RemsStatus:
    patient_id: str
    at: datetime
    rule_pack: str
    rule_pack_version: str
    enrolled: bool
    enrolled_on: date | None
    treatment_status: TreatmentStatus
    newest_anc: AncResult | None
    reported_frequency: MonitoringFrequency
    recommended_frequency: MonitoringFrequency
    next_anc_due: date | None
    psf_window_end: date | None
    overrides_used: int
    override_limit: int
    override_window_days: int
    pending_signatures: tuple[StoredPsf, ...]


def rems_status(
    pack: RulePack, snapshot: PatientSnapshot, patient_id: str, at: datetime, tz: tzinfo
) -> RemsStatus:
    accepted = monitoring.psfs_until(snapshot, at)
    enrollments = [p for p in accepted if p.form.type == PsfType.ENROLLMENT]
    status, _ = monitoring.treatment_status(pack, snapshot, at, tz)
    newest = monitoring.newest_usable(snapshot, at)
    _, interval = monitoring.overdue_interval(pack, snapshot, at, tz)
    due = monitoring.local_date(newest.drawn, tz) + timedelta(days=interval) if newest else None
    last_psf = max((p.form.submitted_at for p in accepted), default=None)
    window_end = (
        monitoring.local_date(last_psf, tz) + timedelta(days=pack.psf_window.value)
        if last_psf
        else None
    )
    limits = pack.overrides.value
    used = sum(  # the window of §6.2, counted as the dispense rule counts it
        1
        for d in snapshot.override_dates
        if d <= at and monitoring.days_between(d, at, tz) < limits.window_days
    )
    pending = tuple(p for p in snapshot.psfs if p.status == PsfStatus.PENDING_PRESCRIBER_SIGNATURE)
    return RemsStatus(
        patient_id=patient_id,
        at=at,
        rule_pack=pack.id,
        rule_pack_version=pack.version,
        enrolled=monitoring.is_enrolled(pack, snapshot, at, tz),
        enrolled_on=monitoring.local_date(enrollments[0].form.submitted_at, tz)
        if enrollments
        else None,
        treatment_status=status,
        newest_anc=newest,
        reported_frequency=monitoring.reported_frequency(pack, snapshot, at, tz),
        recommended_frequency=monitoring.recommended_frequency(pack, snapshot, at, tz),
        next_anc_due=due,
        psf_window_end=window_end,
        overrides_used=used,
        override_limit=limits.per_patient,
        override_window_days=limits.window_days,
        pending_signatures=pending,
    )
