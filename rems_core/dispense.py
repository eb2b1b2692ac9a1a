"""§6 the dispense decision: checks a–f, the pharmacist override, the discharge cap, the RDA."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Protocol

from rems_core import monitoring
from rems_core.anc import below_threshold_finding, rationale_threshold
from rems_core.codes import Code, finding
from rems_core.model import (
    AncResult,
    Decision,
    Designation,
    DispenseRequest,
    Finding,
    Outcome,
    PatientSnapshot,
    Rda,
    Setting,
    TreatmentStatus,
)
from rems_core.rulepack import RulePack

#: Codes that the 2021 enforcement discretion turns from a denial into a warning (§0).
ADMINISTRATIVE = frozenset(
    {
        Code.PHARMACY_NOT_CERTIFIED,
        Code.PATIENT_NOT_ENROLLED,
        Code.PRESCRIBER_NOT_CERTIFIED,
        Code.TREATMENT_INTERRUPTED,
        Code.TREATMENT_DISCONTINUED,
        Code.PSF_OUT_OF_WINDOW,
        Code.OVERRIDE_LIMIT_REACHED,
        Code.OVERRIDE_INCOMPLETE,
    }
)


class IdSource(Protocol):
    def rda_number(self) -> str: ...


@dataclass
class _Checks:
    denials: list[Finding] = field(default_factory=list)  # a–e, the override, the cap
    rationale: list[Finding] = field(default_factory=list)  # f
    warnings: list[Finding] = field(default_factory=list)
    override_used: bool = False
    override_possible: bool = False
    max_days_supply: int | None = None


def effective_setting(request: DispenseRequest, snapshot: PatientSnapshot) -> Setting:
    """§6.3: a discharge is inpatient at an inpatient-only pharmacy, else outpatient."""
    if not request.discharge:
        return request.setting
    pharmacy = snapshot.pharmacies.get(request.pharmacy_npi)
    return (
        Setting.INPATIENT
        if pharmacy is not None and pharmacy.inpatient_only
        else Setting.OUTPATIENT
    )


def discharge_cap(
    pack: RulePack, request: DispenseRequest, snapshot: PatientSnapshot, tz: tzinfo
) -> int | None:
    pharmacy = snapshot.pharmacies.get(request.pharmacy_npi)
    if not request.discharge or pharmacy is None or not pharmacy.inpatient_only:
        return None
    cap = pack.discharge_cap.value
    on = monitoring.local_date(request.dispense_date, tz)
    if cap.by_monitoring_frequency_from is not None and on >= cap.by_monitoring_frequency_from:
        frequency = monitoring.reported_frequency(pack, snapshot, request.dispense_date, tz)
        return cap.by_monitoring_frequency[frequency]
    return cap.inpatient_only


def _designation(snapshot: PatientSnapshot) -> Designation:
    return snapshot.patient.designation if snapshot.patient else Designation.GENERAL


def _registry_checks(
    pack: RulePack, request: DispenseRequest, snapshot: PatientSnapshot, tz: tzinfo, checks: _Checks
) -> bool:
    """a–d; returns whether the patient is enrolled."""
    setting = effective_setting(request, snapshot)
    moment = request.dispense_date
    pharmacy = snapshot.pharmacies.get(request.pharmacy_npi)
    if pharmacy is None or not pharmacy.certified_for(setting):
        checks.denials.append(
            finding(
                Code.PHARMACY_NOT_CERTIFIED, pharmacy=request.pharmacy_npi, setting=setting.value
            )
        )
    enrolled = monitoring.is_enrolled(pack, snapshot, moment, tz)
    if not enrolled:
        detail = "" if snapshot.patient else " (no registry patient matched)"
        checks.denials.append(finding(Code.PATIENT_NOT_ENROLLED, detail=detail))
    prescriber = snapshot.prescribers.get(request.prescriber_npi)
    certified = prescriber is not None and prescriber.certified
    if not certified and setting == Setting.OUTPATIENT:  # inpatient: §6.1 b covers initiation
        checks.denials.append(
            finding(Code.PRESCRIBER_NOT_CERTIFIED, prescriber=request.prescriber_npi)
        )
    status, psf = monitoring.treatment_status(pack, snapshot, moment, tz)
    stopped = {
        TreatmentStatus.INTERRUPTED: Code.TREATMENT_INTERRUPTED,
        TreatmentStatus.DISCONTINUED: Code.TREATMENT_DISCONTINUED,
    }
    if status in stopped and psf is not None:
        since = psf.form.status_effective or monitoring.local_date(psf.form.submitted_at, tz)
        checks.denials.append(finding(stopped[status], since=since.isoformat()))
    if monitoring.in_legacy_window(pack, snapshot, moment, tz):
        checks.warnings.append(
            finding(Code.REENROLLMENT_DUE, deadline=pack.reenrollment_deadline.value.isoformat())
        )
    return enrolled


def _psf_window_fails(
    pack: RulePack, request: DispenseRequest, snapshot: PatientSnapshot, tz: tzinfo
) -> Finding | None:
    """e: outpatient, enrolled patient, no accepted PSF submitted within the window."""
    moment = request.dispense_date
    if monitoring.in_legacy_window(pack, snapshot, moment, tz):
        return None
    accepted = monitoring.psfs_until(snapshot, moment)
    days = pack.psf_window.value
    last = max((p.form.submitted_at for p in accepted), default=None)
    if last is not None and monitoring.days_between(last, moment, tz) <= days:
        return None
    last_text = monitoring.local_date(last, tz).isoformat() if last else "none"
    return finding(Code.PSF_OUT_OF_WINDOW, days=days, last=last_text, override="")


def _overrides_in_window(
    pack: RulePack, snapshot: PatientSnapshot, moment: datetime, tz: tzinfo
) -> int:
    window = pack.overrides.value.window_days
    return sum(
        1
        for d in snapshot.override_dates
        if d <= moment and monitoring.days_between(d, moment, tz) < window
    )


def _override_missing(
    pack: RulePack,
    request: DispenseRequest,
    snapshot: PatientSnapshot,
    override_anc: AncResult | None,
    tz: tzinfo,
) -> list[str]:
    override = request.override
    assert override is not None
    missing = []
    if not (override.prescriber_npi or "").strip():
        missing.append("the prescriber's NPI")
    if not (override.rationale or "").strip():
        missing.append("a dispense rationale")
    frequency = monitoring.reported_frequency(pack, snapshot, request.dispense_date, tz)
    interval = monitoring.interval_days(pack, frequency)
    threshold = rationale_threshold(pack, _designation(snapshot))
    if override_anc is None or not override_anc.usable or override_anc.anc is None:
        missing.append("a usable current ANC")
    elif monitoring.days_between(override_anc.drawn, request.dispense_date, tz) > interval:
        missing.append(f"an ANC drawn within the {frequency.value} interval of {interval} days")
    elif override_anc.anc < threshold:
        missing.append(f"an ANC at or above {threshold}/µL")
    return missing


def _pharmacist_override(
    pack: RulePack,
    request: DispenseRequest,
    snapshot: PatientSnapshot,
    override_anc: AncResult | None,
    tz: tzinfo,
    checks: _Checks,
    window_failure: Finding,
) -> None:
    """§6.2, when only the PSF window fails."""
    limits = pack.overrides.value
    setting = effective_setting(request, snapshot)
    counted = setting in limits.settings
    used = _overrides_in_window(pack, snapshot, request.dispense_date, tz) if counted else 0
    limit_reached = counted and used >= limits.per_patient
    possible_text = " A pharmacist override is possible." if not limit_reached else ""
    window_failure = Finding(window_failure.code, window_failure.text + possible_text)
    if request.override is None:
        checks.denials.append(window_failure)
        checks.override_possible = not limit_reached
        return
    if limit_reached:
        checks.denials += [
            window_failure,
            finding(
                Code.OVERRIDE_LIMIT_REACHED, limit=limits.per_patient, window=limits.window_days
            ),
        ]
        return
    missing = _override_missing(pack, request, snapshot, override_anc, tz)
    if missing:
        checks.denials += [
            window_failure,
            finding(Code.OVERRIDE_INCOMPLETE, missing=", ".join(missing)),
        ]
        checks.override_possible = True
        return
    checks.override_used = True


def rationale_findings(
    pack: RulePack, snapshot: PatientSnapshot, moment: datetime, tz: tzinfo
) -> list[Finding]:
    """f: a low newest ANC or missed labs, unless an accepted rationale covers it (the check of
    a dispense at ``moment``, and the worklist's rationale-required)."""
    rationales = [
        p for p in monitoring.psfs_until(snapshot, moment) if p.form.rationale is not None
    ]
    findings = []
    newest = monitoring.newest_usable(snapshot, moment)
    designation = _designation(snapshot)
    if (
        newest is not None
        and newest.anc is not None
        and newest.anc < rationale_threshold(pack, designation)
    ) and not any(p.judged_at > newest.drawn for p in rationales):
        drawn = monitoring.local_date(newest.drawn, tz).isoformat()
        findings.append(below_threshold_finding(pack, newest, designation, drawn))
    if monitoring.labs_missed(pack, snapshot, moment, tz):
        window = pack.labs_missed_rationale_window.value
        if not any(monitoring.days_between(p.judged_at, moment, tz) <= window for p in rationales):
            newest_text = monitoring.local_date(newest.drawn, tz).isoformat() if newest else "none"
            findings.append(
                finding(Code.LABS_MISSED, days=pack.labs_missed_after.value, newest=newest_text)
            )
    return findings


def _overdue(
    pack: RulePack, snapshot: PatientSnapshot, moment: datetime, tz: tzinfo
) -> list[Finding]:
    if not monitoring.is_overdue(pack, snapshot, moment, tz):
        return []
    newest = monitoring.newest_usable(snapshot, moment)
    frequency, days = monitoring.overdue_interval(pack, snapshot, moment, tz)
    newest_text = monitoring.local_date(newest.drawn, tz).isoformat() if newest else "none"
    return [finding(Code.ANC_OVERDUE, newest=newest_text, frequency=frequency.value, days=days)]


def evaluate(
    pack: RulePack,
    request: DispenseRequest,
    snapshot: PatientSnapshot,
    override_anc: AncResult | None,
    tz: tzinfo,
) -> _Checks:
    checks = _Checks()
    if not pack.advisory:
        enrolled = _registry_checks(pack, request, snapshot, tz, checks)
        setting = effective_setting(request, snapshot)
        window_failure = (
            _psf_window_fails(pack, request, snapshot, tz)
            if enrolled and setting == Setting.OUTPATIENT
            else None
        )
        if window_failure is not None:
            if checks.denials or pack.warns_on_administrative_failures:
                checks.denials.append(window_failure)  # no override needed, or none possible
            else:
                _pharmacist_override(
                    pack, request, snapshot, override_anc, tz, checks, window_failure
                )
        if pack.warns_on_administrative_failures:
            checks.warnings += [d for d in checks.denials if d.code in ADMINISTRATIVE]
            checks.denials = [d for d in checks.denials if d.code not in ADMINISTRATIVE]
            checks.override_possible = False
        cap = discharge_cap(pack, request, snapshot, tz)
        if cap is not None:
            checks.max_days_supply = cap
            if request.days_supply > cap:
                checks.denials.append(
                    finding(
                        Code.DISCHARGE_SUPPLY_EXCEEDS_LIMIT, cap=cap, requested=request.days_supply
                    )
                )
    rationale = rationale_findings(pack, snapshot, request.dispense_date, tz)
    if pack.advisory:
        checks.warnings += rationale
    else:
        checks.rationale = rationale
    checks.warnings += _overdue(pack, snapshot, request.dispense_date, tz)
    return checks


def decide(
    pack: RulePack,
    request: DispenseRequest,
    snapshot: PatientSnapshot,
    tz: tzinfo,
    ids: IdSource,
    override_anc: AncResult | None = None,
) -> Decision:
    patient = snapshot.patient.rems_id if snapshot.patient else None
    common = {"rule_pack": pack.id, "rule_pack_version": pack.version, "patient": patient}
    if request.drug not in pack.clozapine_rxnorm.value:
        return Decision(
            Outcome.NOT_APPLICABLE, (finding(Code.NOT_CLOZAPINE, drug=request.drug),), (), **common
        )
    checks = evaluate(pack, request, snapshot, override_anc, tz)
    warnings = tuple(checks.warnings)
    if checks.denials:
        outcome, reasons = Outcome.DENIED, tuple(checks.denials)
    elif checks.rationale:
        outcome, reasons = Outcome.RATIONALE_REQUIRED, tuple(checks.rationale)
    else:
        return _authorize(pack, request, snapshot, checks, tz, ids, common)
    max_days = (
        checks.max_days_supply
        if any(r.code == Code.DISCHARGE_SUPPLY_EXCEEDS_LIMIT for r in reasons)
        else None
    )
    return Decision(
        outcome,
        reasons,
        warnings,
        max_days_supply=max_days,
        override_possible=checks.override_possible and outcome == Outcome.DENIED,
        **common,
    )


def _authorize(
    pack: RulePack,
    request: DispenseRequest,
    snapshot: PatientSnapshot,
    checks: _Checks,
    tz: tzinfo,
    ids: IdSource,
    common: dict,
) -> Decision:
    max_days = min(request.days_supply, checks.max_days_supply or request.days_supply)
    reasons: tuple[Finding, ...] = ()
    if checks.override_used:
        limits = pack.overrides.value
        used = _overrides_in_window(pack, snapshot, request.dispense_date, tz) + 1
        reasons = (
            finding(
                Code.PHARMACIST_OVERRIDE,
                used=used,
                limit=limits.per_patient,
                window=limits.window_days,
            ),
        )
    rda = None
    if not pack.advisory:
        rda = Rda(
            number=ids.rda_number(),
            valid_until=request.dispense_date + timedelta(days=pack.rda_validity.value),
            patient=common["patient"] or "",
            pharmacy_npi=request.pharmacy_npi,
            prescriber_npi=request.prescriber_npi,
            max_days_supply=max_days,
        )
    return Decision(
        Outcome.AUTHORIZED,
        reasons,
        tuple(checks.warnings),
        rda=rda,
        max_days_supply=max_days,
        override_used=checks.override_used,
        **common,
    )
