"""§3 monitoring frequency, overdue and missed labs; §4 enrollment and §7 treatment status.

Day counts compare calendar dates in the site's time zone.
"""

from __future__ import annotations

import calendar
from datetime import date, datetime, tzinfo

from rems_core.model import (
    AncResult,
    MonitoringFrequency,
    PatientSnapshot,
    PsfType,
    StoredPsf,
    TreatmentStatus,
)
from rems_core.rulepack import RulePack


def local_date(moment: datetime, tz: tzinfo) -> date:
    return moment.astimezone(tz).date()


def days_between(earlier: datetime | date, later: datetime | date, tz: tzinfo) -> int:
    start = local_date(earlier, tz) if isinstance(earlier, datetime) else earlier
    end = local_date(later, tz) if isinstance(later, datetime) else later
    return (end - start).days


def add_months(start: date, months: int) -> date:
    """The same day ``months`` calendar months later, or that month's last day."""
    month_index = start.month - 1 + months
    year, month = start.year + month_index // 12, month_index % 12 + 1
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def interval_days(pack: RulePack, frequency: MonitoringFrequency) -> int:
    return pack.monitoring_interval.value[frequency]


def stricter(
    pack: RulePack, *frequencies: MonitoringFrequency | None
) -> MonitoringFrequency | None:
    present = [f for f in frequencies if f is not None]
    return min(present, key=lambda f: interval_days(pack, f)) if present else None


def psfs_until(snapshot: PatientSnapshot, moment: datetime) -> list[StoredPsf]:
    return [p for p in snapshot.accepted_psfs if p.judged_at <= moment]


def is_enrolled(pack: RulePack, snapshot: PatientSnapshot, moment: datetime, tz: tzinfo) -> bool:
    if snapshot.patient is None:
        return False
    if any(p.form.type == PsfType.ENROLLMENT for p in psfs_until(snapshot, moment)):
        return True
    return in_legacy_window(pack, snapshot, moment, tz)


def in_legacy_window(
    pack: RulePack, snapshot: PatientSnapshot, moment: datetime, tz: tzinfo
) -> bool:
    """Enrolled in the previous system only, and the re-enrollment deadline has not passed."""
    if snapshot.patient is None or not snapshot.patient.legacy_enrolled:
        return False
    if any(p.form.type == PsfType.ENROLLMENT for p in psfs_until(snapshot, moment)):
        return False
    return local_date(moment, tz) <= pack.reenrollment_deadline.value


def treatment_status(
    pack: RulePack, snapshot: PatientSnapshot, moment: datetime, tz: tzinfo
) -> tuple[TreatmentStatus, StoredPsf | None]:
    """§7: the status the latest accepted PSF set, and that PSF."""
    if not is_enrolled(pack, snapshot, moment, tz):
        return TreatmentStatus.NOT_ENROLLED, None
    accepted = psfs_until(snapshot, moment)
    if not accepted:
        return TreatmentStatus.ACTIVE, None
    latest = accepted[-1]
    return latest.form.treatment_status, latest


def _effective(psf: StoredPsf, tz: tzinfo) -> date:
    return psf.form.status_effective or local_date(psf.form.submitted_at, tz)


def phase_anchor(
    pack: RulePack, snapshot: PatientSnapshot, moment: datetime, tz: tzinfo
) -> date | None:
    """Treatment start, moved to the resume date after an interruption of ≥ 30 days."""
    accepted = psfs_until(snapshot, moment)
    anchor = snapshot.patient.treatment_start if snapshot.patient else None
    if anchor is None:
        enrollments = [p for p in accepted if p.form.type == PsfType.ENROLLMENT]
        anchor = local_date(enrollments[0].form.submitted_at, tz) if enrollments else None
    stopped_on: date | None = None
    for psf in accepted:
        status = psf.form.treatment_status
        if status in (TreatmentStatus.INTERRUPTED, TreatmentStatus.DISCONTINUED):
            stopped_on = stopped_on or _effective(psf, tz)
        elif status == TreatmentStatus.ACTIVE and stopped_on is not None:
            resumed_on = _effective(psf, tz)
            if (resumed_on - stopped_on).days >= pack.interruption_resets_phase_after.value:
                anchor = resumed_on
            stopped_on = None
    return anchor


def phase_frequency(pack: RulePack, anchor: date | None, on: date) -> MonitoringFrequency:
    schedule = pack.phase_schedule.value
    if anchor is None:
        return schedule[0].frequency
    for step in schedule:
        if step.before_month is None or on < add_months(anchor, step.before_month):
            return step.frequency
    return schedule[-1].frequency


def newest_usable(snapshot: PatientSnapshot, moment: datetime) -> AncResult | None:
    usable = [a for a in snapshot.usable_ancs if a.drawn <= moment]
    return usable[-1] if usable else None


def recommended_frequency(
    pack: RulePack, snapshot: PatientSnapshot, moment: datetime, tz: tzinfo
) -> MonitoringFrequency:
    """The stricter of the phase schedule and the newest ANC's category advice."""
    anchor = phase_anchor(pack, snapshot, moment, tz)
    by_phase = phase_frequency(pack, anchor, local_date(moment, tz))
    newest = newest_usable(snapshot, moment)
    by_category = None
    if newest is not None and newest.category is not None and snapshot.patient is not None:
        bands = pack.anc_categories.value[snapshot.patient.designation.value]
        by_category = next((b.frequency for b in bands if b.category == newest.category), None)
    return stricter(pack, by_phase, by_category) or by_phase


def reported_frequency(
    pack: RulePack, snapshot: PatientSnapshot, moment: datetime, tz: tzinfo
) -> MonitoringFrequency:
    """The frequency on the latest accepted PSF that states one; else the recommended one."""
    for psf in reversed(psfs_until(snapshot, moment)):
        if psf.form.monitoring_frequency is not None:
            return psf.form.monitoring_frequency
    return recommended_frequency(pack, snapshot, moment, tz)


def overdue_interval(
    pack: RulePack, snapshot: PatientSnapshot, moment: datetime, tz: tzinfo
) -> tuple[MonitoringFrequency, int]:
    frequency = stricter(
        pack,
        reported_frequency(pack, snapshot, moment, tz),
        recommended_frequency(pack, snapshot, moment, tz),
    )
    assert frequency is not None
    return frequency, interval_days(pack, frequency)


def is_overdue(pack: RulePack, snapshot: PatientSnapshot, moment: datetime, tz: tzinfo) -> bool:
    newest = newest_usable(snapshot, moment)
    if newest is None:
        return True
    _, days = overdue_interval(pack, snapshot, moment, tz)
    return days_between(newest.drawn, moment, tz) > days


def labs_missed(pack: RulePack, snapshot: PatientSnapshot, moment: datetime, tz: tzinfo) -> bool:
    newest = newest_usable(snapshot, moment)
    if newest is None:
        return not in_legacy_window(pack, snapshot, moment, tz)
    return days_between(newest.drawn, moment, tz) > pack.labs_missed_after.value
