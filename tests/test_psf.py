"""docs/rules.md §4 enrollment and §5 PSF acceptance."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC
from typing import Any

from rems_core.model import (
    AncResult,
    Designation,
    Finding,
    MonitoringFrequency,
    PatientSnapshot,
    PatientStatusForm,
    PsfStatus,
    PsfType,
    Rationale,
    SubmitterRole,
    TreatmentStatus,
)
from rems_core.psf import PsfJudgement, judge_psf
from tests.builders import DESIGNEE, PRESCRIBER, REMS, UNCERTIFIED, anc, at, patient_file

RATIONALE = Rationale("benefit_outweighs_risk", "stable for years")


def form(submitted: str = "2022-03-01", **fields: Any) -> PatientStatusForm:
    return PatientStatusForm(
        type=fields.pop("type", PsfType.MONTHLY),
        submitted_at=at(submitted),
        submitter=fields.pop("submitter", PRESCRIBER),
        role=fields.pop("role", SubmitterRole.PRESCRIBER),
        prescriber_npi=fields.pop("prescriber_npi", PRESCRIBER),
        **fields,
    )


def judge(
    snapshot: PatientSnapshot, psf_form: PatientStatusForm, own: Iterable[AncResult] = ()
) -> PsfJudgement:
    return judge_psf(REMS, snapshot, psf_form, list(own), UTC)


def codes(findings: Iterable[Finding]) -> set[str]:
    return {f.code for f in findings}


def healthy() -> PatientSnapshot:
    return patient_file(ancs=(anc("2000", "2022-02-25"),))


def test_a_certified_prescribers_monthly_psf_is_accepted() -> None:
    assert judge(healthy(), form()).status == PsfStatus.ACCEPTED


def test_an_attached_designee_may_submit_a_general_monthly_psf() -> None:
    result = judge(healthy(), form(submitter=DESIGNEE, role=SubmitterRole.DESIGNEE))
    assert result.status == PsfStatus.ACCEPTED


def test_an_unattached_designee_is_not_authorized() -> None:
    result = judge(healthy(), form(submitter="D9", role=SubmitterRole.DESIGNEE))
    assert codes(result.reasons) == {"SUBMITTER_NOT_AUTHORIZED"}


def test_an_uncertified_prescriber_is_not_authorized() -> None:
    result = judge(healthy(), form(submitter=UNCERTIFIED, prescriber_npi=UNCERTIFIED))
    assert codes(result.reasons) == {"SUBMITTER_NOT_AUTHORIZED"}


def test_a_low_anc_since_the_last_psf_needs_a_rationale() -> None:
    snapshot = patient_file(ancs=(anc("900", "2022-02-25"),))
    result = judge(snapshot, form())
    assert result.status == PsfStatus.REJECTED and codes(result.reasons) == {"RATIONALE_REQUIRED"}


def test_no_rationale_is_needed_when_treatment_is_interrupted() -> None:
    snapshot = patient_file(ancs=(anc("900", "2022-02-25"),))
    result = judge(
        snapshot, form(type=PsfType.STATUS_CHANGE, treatment_status=TreatmentStatus.INTERRUPTED)
    )
    assert result.status == PsfStatus.ACCEPTED


def test_a_designees_rationale_is_held_for_the_prescribers_signature() -> None:
    snapshot = patient_file(ancs=(anc("900", "2022-02-25"),))
    result = judge(
        snapshot, form(submitter=DESIGNEE, role=SubmitterRole.DESIGNEE, rationale=RATIONALE)
    )
    assert result.status == PsfStatus.PENDING_PRESCRIBER_SIGNATURE
    assert codes(result.reasons) == {"PRESCRIBER_SIGNATURE_REQUIRED"}


def test_a_prescriber_signed_rationale_is_accepted() -> None:
    snapshot = patient_file(ancs=(anc("900", "2022-02-25"),))
    result = judge(snapshot, form(rationale=RATIONALE, signed=True))
    assert result.status == PsfStatus.ACCEPTED


def test_a_designees_ben_designation_is_held() -> None:
    result = judge(
        healthy(),
        form(submitter=DESIGNEE, role=SubmitterRole.DESIGNEE, designation=Designation.BEN),
    )
    assert result.status == PsfStatus.PENDING_PRESCRIBER_SIGNATURE


def test_reason_other_needs_a_text() -> None:
    result = judge(healthy(), form(rationale=Rationale("other", " "), signed=True))
    assert codes(result.reasons) == {"RATIONALE_INCOMPLETE"}


def test_missed_labs_need_a_rationale() -> None:
    snapshot = patient_file(ancs=(anc("2000", "2022-01-28"),))
    assert codes(judge(snapshot, form("2022-02-28")).reasons) == {"RATIONALE_REQUIRED"}
    assert judge(snapshot, form("2022-02-27")).status == PsfStatus.ACCEPTED


def enrollment(submitted: str, **fields: Any) -> PatientStatusForm:
    return form(submitted, type=PsfType.ENROLLMENT, **fields)


def test_enrollment_needs_an_anc_no_older_than_30_days() -> None:
    snapshot = patient_file(enrolled_on=None, ancs=(anc("2000", "2022-01-30"),))
    assert judge(snapshot, enrollment("2022-03-01")).status == PsfStatus.ACCEPTED  # 30 days
    result = judge(snapshot, enrollment("2022-03-02"))  # 31 days
    assert codes(result.reasons) == {"ENROLLMENT_ANC_MISSING_OR_OLD"}


def test_an_enrollment_below_the_initiation_threshold_warns() -> None:
    snapshot = patient_file(enrolled_on=None, ancs=(anc("1200", "2022-02-20"),))
    result = judge(snapshot, enrollment("2022-03-01"))
    assert result.status == PsfStatus.ACCEPTED
    assert "ANC_BELOW_INITIATION_THRESHOLD" in codes(result.warnings)


def test_a_designee_may_not_enroll_a_ben_patient_alone() -> None:
    snapshot = patient_file(
        enrolled_on=None, designation=Designation.BEN, ancs=(anc("1200", "2022-02-20"),)
    )
    result = judge(
        snapshot, enrollment("2022-03-01", submitter=DESIGNEE, role=SubmitterRole.DESIGNEE)
    )
    assert result.status == PsfStatus.PENDING_PRESCRIBER_SIGNATURE


def test_a_monthly_psf_for_a_patient_not_enrolled_is_rejected() -> None:
    result = judge(patient_file(enrolled_on=None, ancs=(anc("2000", "2022-02-25"),)), form())
    assert "PATIENT_NOT_ENROLLED" in codes(result.reasons)


def test_reporting_less_often_than_recommended_warns_but_is_accepted() -> None:
    snapshot = patient_file(ancs=(anc("1200", "2022-02-25"),))
    result = judge(snapshot, form(monitoring_frequency=MonitoringFrequency.WEEKLY))
    assert result.status == PsfStatus.ACCEPTED
    assert "MONITORING_LESS_FREQUENT_THAN_RECOMMENDED" in codes(result.warnings)


def test_under_the_label_pack_a_psf_is_kept_and_refusals_become_warnings() -> None:
    from tests.builders import LABEL

    snapshot = patient_file(ancs=(anc("400", "2025-03-02T08:00"),), enrolled_on="2025-03-01")
    psf_form = form(
        "2025-03-02", submitter=DESIGNEE, role=SubmitterRole.DESIGNEE, designation=Designation.BEN
    )
    result = judge_psf(LABEL, snapshot, psf_form, [], UTC)
    assert result.status == PsfStatus.ACCEPTED and result.reasons == ()
    assert "RATIONALE_REQUIRED" in codes(result.warnings)
    assert not {"PRESCRIBER_SIGNATURE_REQUIRED", "SUBMITTER_NOT_AUTHORIZED"} & codes(
        result.warnings
    )


def test_an_enrollment_answers_for_its_enrollment_anc_not_for_old_results() -> None:
    old_low = anc("800", "2021-06-01")
    snapshot = patient_file(enrolled_on=None, ancs=(old_low, anc("2000", "2022-02-25")))
    assert judge(snapshot, enrollment("2022-03-01")).status == PsfStatus.ACCEPTED
