"""Domain values of the Clozapine REMS: registry, lab results, PSFs, dispense requests, decisions.

Plain frozen dataclasses; every time is timezone-aware UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from functools import cached_property
from typing import Any


class Setting(StrEnum):
    INPATIENT = "inpatient"
    OUTPATIENT = "outpatient"


class Designation(StrEnum):
    GENERAL = "general"
    BEN = "ben"
    HOSPICE = "hospice"


class TreatmentStatus(StrEnum):
    NOT_ENROLLED = "not_enrolled"
    ACTIVE = "active"
    INTERRUPTED = "interrupted"
    DISCONTINUED = "discontinued"


class PsfType(StrEnum):
    ENROLLMENT = "enrollment"
    MONTHLY = "monthly"
    STATUS_CHANGE = "status_change"


class SubmitterRole(StrEnum):
    PRESCRIBER = "prescriber"
    DESIGNEE = "designee"


class MonitoringFrequency(StrEnum):
    THREE_TIMES_WEEKLY = "three_times_weekly"
    WEEKLY = "weekly"
    EVERY_2_WEEKS = "every_2_weeks"
    MONTHLY = "monthly"


class ResultStatus(StrEnum):
    FINAL = "final"
    CORRECTED = "corrected"
    PRELIMINARY = "preliminary"
    CANCELLED = "cancelled"


class AncCategory(StrEnum):
    NORMAL = "normal"
    MILD = "mild"
    MODERATE = "moderate"
    SEVERE = "severe"
    BEN_NEUTROPENIA = "ben_neutropenia"


class Outcome(StrEnum):
    AUTHORIZED = "authorized"
    RATIONALE_REQUIRED = "rationale_required"
    DENIED = "denied"
    NOT_APPLICABLE = "not_applicable"


class PsfStatus(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    PENDING_PRESCRIBER_SIGNATURE = "pending_prescriber_signature"


# --- registry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Designee:
    id: str
    name: str = ""


@dataclass(frozen=True)
class Prescriber:
    npi: str
    name: str = ""
    certified: bool = False
    certified_on: date | None = None
    dea: str | None = None
    email: str | None = None
    designees: tuple[Designee, ...] = ()


@dataclass(frozen=True)
class PharmacyEnrollment:
    setting: Setting
    certified: bool
    certified_on: date | None = None  # §10: dated certifications (None: not dated)
    recertify_by: date | None = None


@dataclass(frozen=True)
class Pharmacy:
    npi: str
    name: str = ""
    ncpdp: str | None = None
    enrollments: tuple[PharmacyEnrollment, ...] = ()

    def certified_for(self, setting: Setting) -> bool:
        return any(e.setting == setting and e.certified for e in self.enrollments)

    @property
    def inpatient_only(self) -> bool:
        return {e.setting for e in self.enrollments} == {Setting.INPATIENT}


@dataclass(frozen=True)
class Identifier:
    system: str
    value: str


@dataclass(frozen=True)
class Patient:
    rems_id: str
    identifiers: tuple[Identifier, ...] = ()
    designation: Designation = Designation.GENERAL
    treatment_start: date | None = None
    legacy_enrolled: bool = False


# --- lab results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LabResult:
    """One reported observation as received (value text and unit untouched)."""

    code: str  # LOINC, after the sender's local code map
    value: str
    unit: str
    drawn: datetime
    status: ResultStatus = ResultStatus.FINAL
    specimen: str | None = None


@dataclass(frozen=True)
class Finding:
    code: str
    text: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "text": self.text}


@dataclass(frozen=True)
class AncResult:
    """An ANC per µL, direct or derived, with what the rules make of it."""

    anc: int | None
    drawn: datetime
    category: AncCategory | None
    usable: bool
    derived: bool = False
    specimen: str | None = None
    code: str = ""
    status: ResultStatus = ResultStatus.FINAL
    warnings: tuple[Finding, ...] = ()
    advice: str = ""
    result_id: str = ""
    received: datetime | None = None


# --- PSF --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rationale:
    reason: str
    text: str = ""


@dataclass(frozen=True)
class ReportedAnc:
    value: str
    unit: str
    drawn: datetime
    code: str = "751-8"


@dataclass(frozen=True)
class PatientStatusForm:
    type: PsfType
    submitted_at: datetime
    submitter: str  # NPI of a prescriber or a designee id
    role: SubmitterRole
    prescriber_npi: str
    designation: Designation | None = None
    treatment_status: TreatmentStatus = TreatmentStatus.ACTIVE
    status_effective: date | None = None
    monitoring_frequency: MonitoringFrequency | None = None
    anc: tuple[ReportedAnc, ...] = ()
    missed_draws: tuple[date, ...] = ()
    justification: str = ""
    rationale: Rationale | None = None
    signed: bool = False
    signed_by: str | None = None
    signed_at: datetime | None = None


@dataclass(frozen=True)
class StoredPsf:
    """A PSF as the store keeps it, with the gateway's judgement."""

    psf_id: str
    form: PatientStatusForm
    status: PsfStatus
    judged_at: datetime  # acceptance time: submission, or the signature that accepted it


@dataclass(frozen=True)
class PsfOutcome:
    status: PsfStatus
    reasons: tuple[Finding, ...] = ()
    warnings: tuple[Finding, ...] = ()
    psf_id: str = ""
    rule_pack: str = ""
    rule_pack_version: str = ""
    patient: str | None = None  # the REMS patient id

    @property
    def accepted(self) -> bool:
        return self.status == PsfStatus.ACCEPTED

    def as_dict(self) -> dict:
        return {
            "accepted": self.accepted,
            "status": str(self.status),
            "reasons": [r.as_dict() for r in self.reasons],
            "warnings": [w.as_dict() for w in self.warnings],
            "psf_id": self.psf_id,
            "rule_pack": self.rule_pack,
            "rule_pack_version": self.rule_pack_version,
            "patient": self.patient,
        }


# --- dispense ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Override:
    prescriber_npi: str | None
    anc: ReportedAnc | None
    rationale: str | None


@dataclass(frozen=True)
class DispenseRequest:
    pharmacy_npi: str
    prescriber_npi: str
    setting: Setting
    dispense_date: datetime
    days_supply: int
    drug: str
    discharge: bool = False
    request_id: str | None = None
    override: Override | None = None


@dataclass(frozen=True)
class Rda:
    number: str
    valid_until: datetime
    patient: str
    pharmacy_npi: str
    prescriber_npi: str
    max_days_supply: int


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reasons: tuple[Finding, ...]
    warnings: tuple[Finding, ...]
    rule_pack: str
    rule_pack_version: str
    rda: Rda | None = None
    max_days_supply: int | None = None
    override_possible: bool = False
    override_used: bool = False
    decision_id: str = ""
    patient: str | None = None

    def as_dict(self) -> dict:
        return {
            "outcome": str(self.outcome),
            "reasons": [r.as_dict() for r in self.reasons],
            "warnings": [w.as_dict() for w in self.warnings],
            "rule_pack": self.rule_pack,
            "rule_pack_version": self.rule_pack_version,
            "rda": self.rda.number if self.rda else None,
            "rda_valid_until": self.rda.valid_until.isoformat() if self.rda else None,
            "rda_pharmacy": self.rda.pharmacy_npi if self.rda else None,
            "rda_prescriber": self.rda.prescriber_npi if self.rda else None,
            "max_days_supply": self.max_days_supply,
            "override_possible": self.override_possible,
            "decision_id": self.decision_id,
            "patient": self.patient,
        }


# --- the patient's file, as the engine sees it ------------------------------------------------


@dataclass(frozen=True)
class PatientSnapshot:
    patient: Patient | None
    anc_results: tuple[AncResult, ...] = ()  # usable and unusable, any order
    psfs: tuple[StoredPsf, ...] = ()
    override_dates: tuple[datetime, ...] = ()  # authorized pharmacist overrides
    prescribers: dict[str, Prescriber] = field(default_factory=dict)
    pharmacies: dict[str, Pharmacy] = field(default_factory=dict)

    @cached_property
    def accepted_psfs(self) -> tuple[StoredPsf, ...]:
        accepted = [p for p in self.psfs if p.status == PsfStatus.ACCEPTED]
        return tuple(sorted(accepted, key=lambda p: p.judged_at))

    @cached_property
    def usable_ancs(self) -> tuple[AncResult, ...]:
        return tuple(sorted((a for a in self.anc_results if a.usable), key=lambda a: a.drawn))


_SCALARS = frozenset({str, int, float, bool, type(None), Decimal})
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def to_plain(value: Any) -> Any:
    """A value as JSON-ready data: dataclasses as dicts, times as ISO text, enums as values.
    (``dataclasses.asdict`` deep-copies and is several times slower on the hot path.)"""
    kind = type(value)
    if kind in _SCALARS:
        return value
    names = _FIELD_NAMES.get(kind)
    if names is None and is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES[kind] = tuple(f.name for f in fields(value))
    if names is not None:
        return {name: to_plain(getattr(value, name)) for name in names}
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, tuple | list):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def decimal_or_none(text: str) -> Decimal | None:
    from decimal import InvalidOperation

    try:
        value = Decimal(text.strip())
    except (InvalidOperation, AttributeError):
        return None
    return value if value.is_finite() else None


def decision_from_dict(data: dict) -> Decision:
    """A stored decision as it was answered (for an idempotent repeat of the same request)."""
    rda = None
    if data.get("rda"):
        rda = Rda(
            number=data["rda"],
            valid_until=datetime.fromisoformat(data["rda_valid_until"]),
            patient=data.get("patient") or "",
            pharmacy_npi=data.get("rda_pharmacy", ""),
            prescriber_npi=data.get("rda_prescriber", ""),
            max_days_supply=data.get("max_days_supply") or 0,
        )
    return Decision(
        outcome=Outcome(data["outcome"]),
        reasons=tuple(Finding(r["code"], r["text"]) for r in data["reasons"]),
        warnings=tuple(Finding(w["code"], w["text"]) for w in data["warnings"]),
        rule_pack=data["rule_pack"],
        rule_pack_version=data["rule_pack_version"],
        rda=rda,
        max_days_supply=data.get("max_days_supply"),
        override_possible=data.get("override_possible", False),
        decision_id=data.get("decision_id", ""),
        patient=data.get("patient"),
    )
