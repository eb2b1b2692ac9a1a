"""What the gateway asks people to do for a patient (rules §5.6, §8; contracts §7): the monthly PSF
drafted from the labs, and the work items (tasks) its conditions open — each keyed by the
occurrence it is about, so that finding it again opens nothing new.

Pure: the patient's file, a time and the pack in; the draft and the tasks the file calls for out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from enum import StrEnum

from rems_core import dispense, monitoring, psf
from rems_core.codes import Code, finding
from rems_core.model import (
    AncResult,
    Designation,
    Finding,
    MonitoringFrequency,
    PatientSnapshot,
    PatientStatusForm,
    PsfStatus,
    PsfType,
    StoredPsf,
    SubmitterRole,
    TreatmentStatus,
)
from rems_core.rulepack import RulePack


class TaskKind(StrEnum):
    PSF_DUE = "psf-due"
    PSF_WINDOW_CLOSING = "psf-window-closing"
    RATIONALE_REQUIRED = "rationale-required"
    ANC_OVERDUE = "anc-overdue"
    LABS_MISSED = "labs-missed"
    SIGNATURE_PENDING = "signature-pending"
    UNMATCHED_RESULT = "unmatched-result"


@dataclass(frozen=True)
class TaskNeed:
    """One occurrence of work: ``period`` tells it from the next one of the same kind."""

    kind: TaskKind
    period: str
    owner_npi: str | None
    designee_may: bool  # a designee may do it for the owner (rules §5.2)
    due: datetime | None
    reason: str
    focus: str | None = None  # "QuestionnaireResponse/…" when it is about a stored resource


@dataclass(frozen=True)
class PsfDraft:
    """The monthly PSF the labs make (rules §5.6): the period since the last accepted PSF, its
    results and missed draws, the frequencies and whether a rationale is needed."""

    prescriber_npi: str
    designation: Designation
    period_start: date  # the last accepted PSF's submission date
    due: date
    ancs: tuple[AncResult, ...]
    missed_draws: tuple[date, ...]
    reported_frequency: MonitoringFrequency
    recommended_frequency: MonitoringFrequency
    rationale_needs: tuple[str, ...]  # why a PSF submitted now would need a rationale (§5.3)

    @property
    def designee_may(self) -> bool:
        """A designee may complete it: a general-population form needing no rationale (§5.2)."""
        return self.designation == Designation.GENERAL and not self.rationale_needs


@dataclass(frozen=True)
class Worklist:
    status: TreatmentStatus
    draft: PsfDraft | None  # the monthly draft people should see now (from its lead time)
    needs: tuple[TaskNeed, ...]
    period: PsfDraft | None = None  # the current period's draft, shown or not yet


def worklist(
    pack: RulePack,
    snapshot: PatientSnapshot,
    moment: datetime,
    tz: tzinfo,
    inpatient_only: bool = False,
) -> Worklist:
    """The draft and the tasks the patient's file calls for at ``moment``. ``inpatient_only``:
    the patient's only dispenses within the PSF window were inpatient (no monthly PSF is due)."""
    status, _ = monitoring.treatment_status(pack, snapshot, moment, tz)
    if status != TreatmentStatus.ACTIVE:
        return Worklist(status, None, ())
    last = _last_accepted(snapshot, moment)
    prescriber = last.form.prescriber_npi if last else None  # whose patient this is
    needs = _lab_needs(pack, snapshot, moment, tz, prescriber)
    if pack.advisory:  # the label pack: monitoring advice, no REMS paperwork
        return Worklist(status, None, tuple(needs))
    needs += _signature_needs(snapshot)
    if last is None:  # a legacy patient not yet re-enrolled: nothing to draft from
        return Worklist(status, None, tuple(needs))
    draft = _draft(pack, snapshot, moment, tz, last)
    needs += _rationale_needs(pack, snapshot, moment, tz, last.form.prescriber_npi)
    if not inpatient_only:
        needs += _psf_needs(pack, moment, tz, draft)
    opens = draft.due - timedelta(days=pack.psf_draft_lead.value)
    shown = draft if not inpatient_only and monitoring.local_date(moment, tz) >= opens else None
    return Worklist(status, shown, tuple(needs), draft)


def psf_due(pack: RulePack, last: StoredPsf, tz: tzinfo) -> date:
    """Due one calendar month (the pack's) after the last accepted PSF's submission."""
    submitted = monitoring.local_date(last.form.submitted_at, tz)
    return monitoring.add_months(submitted, pack.psf_due_after.value)


def _last_accepted(snapshot: PatientSnapshot, moment: datetime) -> StoredPsf | None:
    accepted = monitoring.psfs_until(snapshot, moment)
    return max(accepted, key=lambda p: p.form.submitted_at) if accepted else None


def _at_start(day: date, tz: tzinfo) -> datetime:
    return datetime.combine(day, time(0), tz)


def _draft(
    pack: RulePack,
    snapshot: PatientSnapshot,
    moment: datetime,
    tz: tzinfo,
    last: StoredPsf,
) -> PsfDraft:
    since = last.form.submitted_at
    ancs = tuple(a for a in snapshot.usable_ancs if since < a.drawn <= moment)
    designation = snapshot.patient.designation if snapshot.patient else Designation.GENERAL
    frequency, _ = monitoring.overdue_interval(pack, snapshot, moment, tz)
    return PsfDraft(
        prescriber_npi=last.form.prescriber_npi,
        designation=designation,
        period_start=monitoring.local_date(since, tz),
        due=psf_due(pack, last, tz),
        ancs=ancs,
        missed_draws=missed_draws(pack, snapshot, since, moment, tz, frequency),
        reported_frequency=monitoring.reported_frequency(pack, snapshot, moment, tz),
        recommended_frequency=monitoring.recommended_frequency(pack, snapshot, moment, tz),
        rationale_needs=_psf_rationale_needs(pack, snapshot, moment, tz, last.form.prescriber_npi),
    )


def missed_draws(
    pack: RulePack,
    snapshot: PatientSnapshot,
    since: datetime,
    moment: datetime,
    tz: tzinfo,
    frequency: MonitoringFrequency,
) -> tuple[date, ...]:
    """The dates in the period a draw fell due (an interval after the previous usable draw)
    and none came by then."""
    interval = timedelta(days=monitoring.interval_days(pack, frequency))
    draws = [monitoring.local_date(a.drawn, tz) for a in snapshot.usable_ancs if a.drawn <= moment]
    start, end = monitoring.local_date(since, tz), monitoring.local_date(moment, tz)
    before = [d for d in draws if d <= start]
    previous = before[-1] if before else start
    missed = []
    for came in [*(d for d in draws if d > start), end]:  # a draw, or "still none by today"
        due = previous + interval
        while due < came:
            if due > start:
                missed.append(due)
            due += interval
        previous = came
    return tuple(missed)


def _psf_rationale_needs(
    pack: RulePack, snapshot: PatientSnapshot, moment: datetime, tz: tzinfo, prescriber: str
) -> tuple[str, ...]:
    """What the PSF judge (rules §5.3) would ask a rationale for, were the monthly PSF submitted
    by the prescriber now."""
    form = PatientStatusForm(
        PsfType.MONTHLY, moment, prescriber, SubmitterRole.PRESCRIBER, prescriber
    )
    return tuple(psf.rationale_needs(pack, snapshot, form, [], tz))


def lab_findings(
    pack: RulePack, snapshot: PatientSnapshot, moment: datetime, tz: tzinfo
) -> list[Finding]:
    """§3, §8: LABS_MISSED and ANC_OVERDUE as the file shows them at ``moment``."""
    newest = monitoring.newest_usable(snapshot, moment)
    newest_text = monitoring.local_date(newest.drawn, tz).isoformat() if newest else "none"
    findings = []
    if monitoring.labs_missed(pack, snapshot, moment, tz):
        findings.append(
            finding(Code.LABS_MISSED, days=pack.labs_missed_after.value, newest=newest_text)
        )
    if monitoring.is_overdue(pack, snapshot, moment, tz):
        frequency, days = monitoring.overdue_interval(pack, snapshot, moment, tz)
        findings.append(
            finding(Code.ANC_OVERDUE, newest=newest_text, frequency=frequency.value, days=days)
        )
    return findings


def _lab_needs(
    pack: RulePack,
    snapshot: PatientSnapshot,
    moment: datetime,
    tz: tzinfo,
    prescriber: str | None,
) -> list[TaskNeed]:
    """anc-overdue and labs-missed, one per episode (the newest usable ANC's draw); an overdue
    ANC falls due an interval after that draw."""
    newest = monitoring.newest_usable(snapshot, moment)
    episode = newest.drawn.isoformat() if newest else "none"
    needs = []
    for found in lab_findings(pack, snapshot, moment, tz):
        kind, due = TaskKind.LABS_MISSED, None
        if found.code == Code.ANC_OVERDUE:
            kind = TaskKind.ANC_OVERDUE
            if newest is not None:
                _, days = monitoring.overdue_interval(pack, snapshot, moment, tz)
                drawn_on = monitoring.local_date(newest.drawn, tz)
                due = _at_start(drawn_on + timedelta(days=days), tz)
        needs.append(TaskNeed(kind, episode, prescriber, True, due, found.text))
    return needs


def _signature_needs(snapshot: PatientSnapshot) -> list[TaskNeed]:
    return [
        TaskNeed(
            TaskKind.SIGNATURE_PENDING,
            held.psf_id,
            held.form.prescriber_npi,
            False,
            None,
            f"a {held.form.type.value} PSF waits for the prescriber's signature",
        )
        for held in snapshot.psfs
        if held.status == PsfStatus.PENDING_PRESCRIBER_SIGNATURE
    ]


def _rationale_needs(
    pack: RulePack,
    snapshot: PatientSnapshot,
    moment: datetime,
    tz: tzinfo,
    prescriber: str | None,
) -> list[TaskNeed]:
    """rationale-required: a dispense now would need one (§6.1 f) — one per low newest ANC,
    and one per episode of missed labs."""
    newest = monitoring.newest_usable(snapshot, moment)
    episode = newest.drawn.isoformat() if newest else "none"
    periods = {Code.ANC_BELOW_THRESHOLD: f"anc:{episode}", Code.LABS_MISSED: f"missed:{episode}"}
    return [
        TaskNeed(TaskKind.RATIONALE_REQUIRED, periods[f.code], prescriber, False, None, f.text)
        for f in dispense.rationale_findings(pack, snapshot, moment, tz)
    ]


def _psf_needs(pack: RulePack, moment: datetime, tz: tzinfo, draft: PsfDraft) -> list[TaskNeed]:
    """psf-due from the day the draft appears; psf-window-closing a reminder before the §6.1 e
    window closes — both for the period since the last accepted PSF."""
    today = monitoring.local_date(moment, tz)
    period = draft.period_start.isoformat()
    owner = draft.prescriber_npi
    needs = []
    if today >= draft.due - timedelta(days=pack.psf_draft_lead.value):
        reason = f"the monthly PSF is due {draft.due.isoformat()}"
        due = _at_start(draft.due, tz)
        needs.append(TaskNeed(TaskKind.PSF_DUE, period, owner, draft.designee_may, due, reason))
    window_end = draft.period_start + timedelta(days=pack.psf_window.value)
    if today >= window_end - timedelta(days=pack.psf_window_reminder.value):
        reason = (
            f"the PSF window closes after {window_end.isoformat()}: "
            "outpatient dispenses are denied after it"
        )
        needs.append(
            TaskNeed(
                TaskKind.PSF_WINDOW_CLOSING,
                period,
                owner,
                draft.designee_may,
                _at_start(window_end + timedelta(days=1), tz),
                reason,
            )
        )
    return needs
