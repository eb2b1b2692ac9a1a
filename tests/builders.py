"""Small builders for engine tests: a registry, a patient's file, requests."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from itertools import count
from typing import Any

from rems_core.anc import specimen_ancs
from rems_core.model import (
    AncResult,
    Designation,
    Designee,
    DispenseRequest,
    LabResult,
    Patient,
    PatientSnapshot,
    PatientStatusForm,
    Pharmacy,
    PharmacyEnrollment,
    Prescriber,
    PsfStatus,
    PsfType,
    Setting,
    StoredPsf,
    SubmitterRole,
)
from rems_core.rulepack import PackLibrary, RulePack

PACKS = PackLibrary()
REMS = PACKS.get("clozapine-rems-2021")
DISCRETION = PACKS.get("clozapine-rems-2021+discretion")
LABEL = PACKS.get("clozapine-label-2025")

PRESCRIBER = "1234567893"
UNCERTIFIED = "1245319599"
PHARMACY = "1588667638"
INPATIENT_ONLY = "1679576722"
DESIGNEE = "D1"


def at(text: str) -> datetime:
    """'2022-03-01' or '2022-03-01T09:00' as UTC."""
    moment = datetime.fromisoformat(text if "T" in text else text + "T12:00")
    return moment.replace(tzinfo=UTC)


def prescribers() -> dict[str, Prescriber]:
    return {
        PRESCRIBER: Prescriber(PRESCRIBER, certified=True, designees=(Designee(DESIGNEE),)),
        UNCERTIFIED: Prescriber(UNCERTIFIED, certified=False),
    }


def pharmacies() -> dict[str, Pharmacy]:
    both = (
        PharmacyEnrollment(Setting.INPATIENT, True),
        PharmacyEnrollment(Setting.OUTPATIENT, True),
    )
    return {
        PHARMACY: Pharmacy(PHARMACY, enrollments=both),
        INPATIENT_ONLY: Pharmacy(
            INPATIENT_ONLY, enrollments=(PharmacyEnrollment(Setting.INPATIENT, True),)
        ),
    }


_ids = count(1)


def anc(
    value: str,
    drawn: str,
    unit: str = "/uL",
    designation: Designation = Designation.GENERAL,
    pack: RulePack = REMS,
    received: str | None = None,
) -> AncResult:
    result = LabResult("751-8", value, unit, at(drawn))
    (judged,) = specimen_ancs(pack, designation, [result])
    return replace(judged, result_id=f"anc-{next(_ids)}", received=at(received or drawn))


def psf(submitted: str, psf_type: PsfType = PsfType.MONTHLY, **fields: Any) -> StoredPsf:
    form = PatientStatusForm(
        type=psf_type,
        submitted_at=at(submitted),
        submitter=fields.pop("submitter", PRESCRIBER),
        role=fields.pop("role", SubmitterRole.PRESCRIBER),
        prescriber_npi=fields.pop("prescriber_npi", PRESCRIBER),
        signed=fields.pop("signed", True),
        **fields,
    )
    return StoredPsf(f"psf-{next(_ids)}", form, PsfStatus.ACCEPTED, form.submitted_at)


def patient_file(
    enrolled_on: str | None = "2022-01-01",
    ancs: tuple[AncResult, ...] = (),
    psfs: tuple[StoredPsf, ...] = (),
    designation: Designation = Designation.GENERAL,
    treatment_start: date | None = date(2020, 1, 1),
    legacy: bool = False,
    overrides: tuple[str, ...] = (),
) -> PatientSnapshot:
    enrollment = (psf(enrolled_on, PsfType.ENROLLMENT),) if enrolled_on else ()
    return PatientSnapshot(
        patient=Patient("RP-1", (), designation, treatment_start, legacy),
        anc_results=ancs,
        psfs=(*enrollment, *psfs),
        override_dates=tuple(at(d) for d in overrides),
        prescribers=prescribers(),
        pharmacies=pharmacies(),
    )


def dispense(when: str, **fields: Any) -> DispenseRequest:
    return DispenseRequest(
        pharmacy_npi=fields.pop("pharmacy_npi", PHARMACY),
        prescriber_npi=fields.pop("prescriber_npi", PRESCRIBER),
        setting=fields.pop("setting", Setting.OUTPATIENT),
        dispense_date=at(when),
        days_supply=fields.pop("days_supply", 30),
        drug=fields.pop("drug", "197536"),
        **fields,
    )


class CountingIds:
    def __init__(self) -> None:
        self.n = 0

    def rda_number(self) -> str:
        self.n += 1
        return f"RDA-TEST-{self.n}"

    def new_id(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}-{self.n}"
