"""§4 enrollment and §5 Patient Status Form acceptance.

``judge_psf`` takes the patient's snapshot that already holds the PSF's own ANC results as lab
results, and decides: accepted, rejected, or held for the prescriber's signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo

from rems_core import monitoring
from rems_core.anc import rationale_threshold
from rems_core.codes import Code, finding
from rems_core.model import (
    AncResult,
    Designation,
    Finding,
    PatientSnapshot,
    PatientStatusForm,
    PsfStatus,
    PsfType,
    StoredPsf,
    SubmitterRole,
    TreatmentStatus,
)
from rems_core.rulepack import RulePack

#: What the label pack still reports of a PSF: the clinical finding, not registry or form checks.
CLINICAL = frozenset({Code.RATIONALE_REQUIRED})


@dataclass(frozen=True)
class PsfJudgement:
    status: PsfStatus
    reasons: tuple[Finding, ...]
    warnings: tuple[Finding, ...]


def _certified(snapshot: PatientSnapshot, npi: str | None) -> bool:
    prescriber = snapshot.prescribers.get(npi or "")
    return prescriber is not None and prescriber.certified


def submitter_problem(snapshot: PatientSnapshot, psf: PatientStatusForm) -> str | None:
    """Why this submitter may not submit for the named prescriber, or None."""
    if psf.role == SubmitterRole.PRESCRIBER:
        return None if _certified(snapshot, psf.submitter) else "not a certified prescriber"
    prescriber = snapshot.prescribers.get(psf.prescriber_npi)
    if prescriber is None or not prescriber.certified:
        return "the named prescriber is not certified"
    if all(d.id != psf.submitter for d in prescriber.designees):
        return "not a designee attached to that prescriber"
    return None


def signed_by_certified_prescriber(snapshot: PatientSnapshot, psf: PatientStatusForm) -> bool:
    if not psf.signed:
        return False
    signer = psf.signed_by or (psf.submitter if psf.role == SubmitterRole.PRESCRIBER else None)
    return _certified(snapshot, signer)


def carried_designation(snapshot: PatientSnapshot, psf: PatientStatusForm) -> Designation | None:
    """The designation a PSF carries: its own; an enrollment carries the registry's."""
    if psf.designation is not None:
        return psf.designation
    if psf.type == PsfType.ENROLLMENT and snapshot.patient is not None:
        return snapshot.patient.designation
    return None


def population(snapshot: PatientSnapshot, psf: PatientStatusForm) -> Designation:
    """Whose thresholds apply: the designation the PSF carries, else the patient's."""
    patient = snapshot.patient.designation if snapshot.patient else Designation.GENERAL
    return carried_designation(snapshot, psf) or patient


def _low_ancs(
    pack: RulePack,
    snapshot: PatientSnapshot,
    psf: PatientStatusForm,
    own: list[AncResult],
    tz: tzinfo,
) -> list[AncResult]:
    """Usable ANCs below threshold that this PSF must answer for: those on it, and those received
    since the previous accepted PSF (for a first enrollment: its enrollment ANC)."""
    previous = monitoring.psfs_until(snapshot, psf.submitted_at)
    candidates = [a for a in own if a.usable]
    if previous:
        since = previous[-1].judged_at
        candidates += [a for a in snapshot.usable_ancs if (a.received or a.drawn) > since]
    elif psf.type == PsfType.ENROLLMENT:
        candidates += [a for a in [_enrollment_anc(pack, snapshot, psf, tz)] if a is not None]
    else:
        candidates += snapshot.usable_ancs
    threshold = rationale_threshold(pack, population(snapshot, psf))
    unique = {a.result_id or id(a): a for a in candidates}  # its own ANCs are in the snapshot too
    return [a for a in unique.values() if a.anc is not None and a.anc < threshold]


def _rationale_problem(pack: RulePack, psf: PatientStatusForm) -> str | None:
    rationale = psf.rationale
    if rationale is None:
        return None
    if rationale.reason not in pack.rationale_reasons.value:
        known = ", ".join(pack.rationale_reasons.value)
        return f"unknown reason {rationale.reason!r} (known: {known})"
    if rationale.reason in pack.rationale_text_required_for.value and not rationale.text.strip():
        return f"reason {rationale.reason!r} needs a text"
    return None


def _enrollment_anc(
    pack: RulePack, snapshot: PatientSnapshot, psf: PatientStatusForm, tz: tzinfo
) -> AncResult | None:
    max_age = pack.enrollment_anc_max_age.value
    recent = [
        a
        for a in snapshot.usable_ancs
        if a.drawn <= psf.submitted_at
        and monitoring.days_between(a.drawn, psf.submitted_at, tz) <= max_age
    ]
    return recent[-1] if recent else None


def _rejections(
    pack: RulePack,
    snapshot: PatientSnapshot,
    psf: PatientStatusForm,
    own: list[AncResult],
    tz: tzinfo,
) -> list[Finding]:
    reasons = []
    why = submitter_problem(snapshot, psf)
    if why:
        reasons.append(
            finding(
                Code.SUBMITTER_NOT_AUTHORIZED,
                submitter=psf.submitter,
                prescriber=psf.prescriber_npi,
                why=why,
            )
        )
    if psf.type == PsfType.ENROLLMENT:
        if _enrollment_anc(pack, snapshot, psf, tz) is None:
            reasons.append(
                finding(
                    Code.ENROLLMENT_ANC_MISSING_OR_OLD,
                    days=pack.enrollment_anc_max_age.value,
                    date=monitoring.local_date(psf.submitted_at, tz).isoformat(),
                )
            )
    elif not monitoring.is_enrolled(pack, snapshot, psf.submitted_at, tz):
        reasons.append(
            finding(Code.PATIENT_NOT_ENROLLED, detail=": submit an enrollment PSF first")
        )
    needs = rationale_needs(pack, snapshot, psf, own, tz)
    if needs and psf.rationale is None:
        reasons.append(finding(Code.RATIONALE_REQUIRED, why="; ".join(needs)))
    problem = _rationale_problem(pack, psf)
    if problem:
        reasons.append(finding(Code.RATIONALE_INCOMPLETE, why=problem))
    return reasons


def rationale_needs(
    pack: RulePack,
    snapshot: PatientSnapshot,
    psf: PatientStatusForm,
    own: list[AncResult],
    tz: tzinfo,
) -> list[str]:
    if psf.treatment_status != TreatmentStatus.ACTIVE:
        return []
    needs = [
        f"ANC {a.anc}/µL drawn {monitoring.local_date(a.drawn, tz).isoformat()}"
        for a in _low_ancs(pack, snapshot, psf, own, tz)
    ]
    if psf.type != PsfType.ENROLLMENT and monitoring.labs_missed(
        pack, snapshot, psf.submitted_at, tz
    ):
        needs.append(f"no usable ANC for more than {pack.labs_missed_after.value} days")
    return needs


def _signature_needs(snapshot: PatientSnapshot, psf: PatientStatusForm) -> list[str]:
    needs = []
    if psf.rationale is not None:
        needs.append("it carries a treatment rationale")
    designation = carried_designation(snapshot, psf)
    if designation in (Designation.BEN, Designation.HOSPICE):
        needs.append(f"it carries a {designation.value} designation")
    return needs


def _warnings(
    pack: RulePack,
    snapshot: PatientSnapshot,
    psf: PatientStatusForm,
    own: list[AncResult],
    tz: tzinfo,
) -> list[Finding]:
    warnings = []
    as_accepted = StoredPsf("", psf, PsfStatus.ACCEPTED, psf.submitted_at)
    future = PatientSnapshot(
        patient=snapshot.patient,
        anc_results=snapshot.anc_results,
        psfs=(*snapshot.psfs, as_accepted),
        prescribers=snapshot.prescribers,
    )
    recommended = monitoring.recommended_frequency(pack, future, psf.submitted_at, tz)
    reported = psf.monitoring_frequency
    if reported is not None and monitoring.interval_days(pack, reported) > monitoring.interval_days(
        pack, recommended
    ):
        warnings.append(
            finding(
                Code.MONITORING_LESS_FREQUENT_THAN_RECOMMENDED,
                reported=reported.value,
                recommended=recommended.value,
            )
        )
    if psf.type == PsfType.ENROLLMENT:
        anc = _enrollment_anc(pack, snapshot, psf, tz)
        threshold = getattr(pack.initiation_below.value, population(snapshot, psf).value)
        if anc is not None and anc.anc is not None and anc.anc < threshold:
            warnings.append(
                finding(Code.ANC_BELOW_INITIATION_THRESHOLD, anc=anc.anc, threshold=threshold)
            )
    return warnings


def judge_psf(
    pack: RulePack,
    snapshot: PatientSnapshot,
    psf: PatientStatusForm,
    own_ancs: list[AncResult],
    tz: tzinfo,
) -> PsfJudgement:
    """§5 acceptance: rejections first, then the prescriber's signature, then warnings."""
    warnings = tuple(_warnings(pack, snapshot, psf, own_ancs, tz))
    reasons = _rejections(pack, snapshot, psf, own_ancs, tz)
    needs = _signature_needs(snapshot, psf)
    if needs and not signed_by_certified_prescriber(snapshot, psf):
        held = finding(Code.PRESCRIBER_SIGNATURE_REQUIRED, why="; ".join(needs))
    else:
        held = None
    if pack.advisory:  # no REMS: the form is kept; only the clinical refusals remain, as advice
        advisories = tuple(r for r in reasons if r.code in CLINICAL)
        return PsfJudgement(PsfStatus.ACCEPTED, (), (*advisories, *warnings))
    if reasons:
        return PsfJudgement(PsfStatus.REJECTED, tuple(reasons), warnings)
    if held:
        return PsfJudgement(PsfStatus.PENDING_PRESCRIBER_SIGNATURE, (held,), warnings)
    return PsfJudgement(PsfStatus.ACCEPTED, (), warnings)


def signer_problem(snapshot: PatientSnapshot, pending: StoredPsf, signer: str) -> str | None:
    if not _certified(snapshot, signer):
        return "not a certified prescriber"
    form = pending.form
    if signer not in (form.prescriber_npi, form.submitter):
        return "not the prescriber named on the form"
    return None


def signed_form(pending: StoredPsf, signer: str, at: datetime) -> PatientStatusForm:
    from dataclasses import replace

    return replace(pending.form, signed=True, signed_by=signer, signed_at=at, submitted_at=at)
