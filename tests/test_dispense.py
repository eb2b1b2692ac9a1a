"""docs/rules.md §6: checks a–f, the pharmacist override, the discharge cap, the RDA; §0 packs."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC
from typing import Any

import pytest

from rems_core.dispense import decide
from rems_core.model import (
    AncResult,
    Decision,
    Designation,
    DispenseRequest,
    Finding,
    MonitoringFrequency,
    Outcome,
    Override,
    PatientSnapshot,
    ReportedAnc,
    Setting,
    TreatmentStatus,
)
from rems_core.rulepack import RulePack
from tests.builders import (
    DISCRETION,
    INPATIENT_ONLY,
    LABEL,
    REMS,
    UNCERTIFIED,
    CountingIds,
    anc,
    at,
    dispense,
    patient_file,
    psf,
)


def run(
    snapshot: PatientSnapshot,
    request: DispenseRequest,
    pack: RulePack = REMS,
    override_anc: AncResult | None = None,
) -> Decision:
    return decide(pack, request, snapshot, UTC, CountingIds(), override_anc)


def codes(findings: Iterable[Finding]) -> set[str]:
    return {f.code for f in findings}


def well(enrolled_on: str = "2022-03-01", **kw: Any) -> PatientSnapshot:
    return patient_file(enrolled_on=enrolled_on, ancs=(anc("2000", "2022-03-01"),), **kw)


def test_a_well_patient_is_authorized_with_an_rda() -> None:
    decision = run(well(), dispense("2022-03-02"))
    assert decision.outcome == Outcome.AUTHORIZED and decision.reasons == ()
    assert decision.rda is not None and decision.rda.max_days_supply == 30
    assert decision.rda.valid_until == at("2022-03-09")


def test_a_drug_that_is_not_clozapine_is_not_applicable() -> None:
    decision = run(well(), dispense("2022-03-02", drug="161"))
    assert decision.outcome == Outcome.NOT_APPLICABLE and codes(decision.reasons) == {
        "NOT_CLOZAPINE"
    }


def test_every_failing_administrative_check_is_listed() -> None:
    decision = run(
        patient_file(enrolled_on=None),
        dispense("2022-03-02", prescriber_npi=UNCERTIFIED, pharmacy_npi="1999999984"),
    )
    assert decision.outcome == Outcome.DENIED
    assert codes(decision.reasons) == {
        "PHARMACY_NOT_CERTIFIED",
        "PATIENT_NOT_ENROLLED",
        "PRESCRIBER_NOT_CERTIFIED",
    }


def test_inpatient_prescribing_needs_no_certification_for_an_enrolled_patient() -> None:
    request = dispense("2022-03-02", prescriber_npi=UNCERTIFIED, setting=Setting.INPATIENT)
    assert run(well(), request).outcome == Outcome.AUTHORIZED


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (TreatmentStatus.INTERRUPTED, "TREATMENT_INTERRUPTED"),
        (TreatmentStatus.DISCONTINUED, "TREATMENT_DISCONTINUED"),
    ],
)
def test_an_interrupted_or_discontinued_treatment_is_denied(
    status: TreatmentStatus, code: str
) -> None:
    snapshot = well(psfs=(psf("2022-03-01T13:00", treatment_status=status),))
    assert codes(run(snapshot, dispense("2022-03-02")).reasons) == {code}


@pytest.mark.parametrize(
    ("day", "outcome"), [("2022-04-07", Outcome.AUTHORIZED), ("2022-04-08", Outcome.DENIED)]
)
def test_the_psf_window_is_37_days_inclusive(day: str, outcome: Outcome) -> None:
    snapshot = patient_file(enrolled_on="2022-03-01", ancs=(anc("2000", day),))
    decision = run(snapshot, dispense(day))
    assert decision.outcome == outcome
    if outcome == Outcome.DENIED:
        assert codes(decision.reasons) == {"PSF_OUT_OF_WINDOW"} and decision.override_possible


def test_the_psf_window_does_not_apply_to_inpatient_dispenses() -> None:
    snapshot = patient_file(enrolled_on="2022-03-01", ancs=(anc("2000", "2022-04-20"),))
    assert (
        run(snapshot, dispense("2022-04-20", setting=Setting.INPATIENT)).outcome
        == Outcome.AUTHORIZED
    )


def test_a_low_anc_needs_a_rationale_only_when_nothing_administrative_fails() -> None:
    low = patient_file(ancs=(anc("900", "2022-03-01"),), enrolled_on="2022-02-20")
    assert codes(run(low, dispense("2022-03-02")).reasons) == {"ANC_BELOW_THRESHOLD"}
    denied = run(low, dispense("2022-03-02", pharmacy_npi="1999999984"))
    assert codes(denied.reasons) == {"PHARMACY_NOT_CERTIFIED"}


def test_an_accepted_rationale_after_the_draw_covers_a_low_anc() -> None:
    from rems_core.model import Rationale

    covered = patient_file(
        enrolled_on="2022-02-20",
        ancs=(anc("900", "2022-03-01T08:00"),),
        psfs=(psf("2022-03-01T10:00", rationale=Rationale("benefit_outweighs_risk", "x")),),
    )
    assert run(covered, dispense("2022-03-02")).outcome == Outcome.AUTHORIZED


def test_missed_labs_need_a_rationale() -> None:
    snapshot = patient_file(enrolled_on="2022-03-01", ancs=(anc("2000", "2022-02-01"),))
    decision = run(snapshot, dispense("2022-03-04"))
    assert decision.outcome == Outcome.RATIONALE_REQUIRED and codes(decision.reasons) == {
        "LABS_MISSED"
    }


def test_a_ben_patient_uses_the_ben_threshold() -> None:
    snapshot = patient_file(
        designation=Designation.BEN,
        enrolled_on="2022-03-01",
        ancs=(anc("600", "2022-03-01", designation=Designation.BEN),),
    )
    assert run(snapshot, dispense("2022-03-02")).outcome == Outcome.AUTHORIZED


def out_of_window(overrides: tuple[str, ...] = ()) -> PatientSnapshot:
    return patient_file(
        enrolled_on="2022-01-01", ancs=(anc("2000", "2022-03-01"),), overrides=overrides
    )


OVERRIDE = Override("1234567893", ReportedAnc("2000", "/uL", at("2022-03-01")), "PSF fax pending")
CURRENT = anc("2000", "2022-03-01")


def test_a_complete_override_authorizes_with_its_reason() -> None:
    decision = run(out_of_window(), dispense("2022-03-02", override=OVERRIDE), override_anc=CURRENT)
    assert decision.outcome == Outcome.AUTHORIZED
    assert codes(decision.reasons) == {"PHARMACIST_OVERRIDE"} and decision.override_used


def test_the_fourth_outpatient_override_within_365_days_is_denied() -> None:
    three = ("2021-04-01", "2021-09-01", "2022-01-15")
    decision = run(
        out_of_window(three), dispense("2022-03-02", override=OVERRIDE), override_anc=CURRENT
    )
    assert decision.outcome == Outcome.DENIED
    assert codes(decision.reasons) == {"PSF_OUT_OF_WINDOW", "OVERRIDE_LIMIT_REACHED"}
    assert not decision.override_possible


def test_an_override_365_days_old_no_longer_counts() -> None:
    three = ("2021-03-02", "2021-09-01", "2022-01-15")
    decision = run(
        out_of_window(three), dispense("2022-03-02", override=OVERRIDE), override_anc=CURRENT
    )
    assert decision.outcome == Outcome.AUTHORIZED


def test_an_override_without_rationale_is_incomplete() -> None:
    incomplete = Override("1234567893", OVERRIDE.anc, "")
    decision = run(
        out_of_window(), dispense("2022-03-02", override=incomplete), override_anc=CURRENT
    )
    assert codes(decision.reasons) == {"PSF_OUT_OF_WINDOW", "OVERRIDE_INCOMPLETE"}
    assert decision.override_possible


def test_an_override_anc_below_the_threshold_is_incomplete() -> None:
    low = anc("900", "2022-03-01")
    decision = run(out_of_window(), dispense("2022-03-02", override=OVERRIDE), override_anc=low)
    assert codes(decision.reasons) == {"PSF_OUT_OF_WINDOW", "OVERRIDE_INCOMPLETE"}


@pytest.mark.parametrize(("days", "outcome"), [(7, Outcome.AUTHORIZED), (8, Outcome.DENIED)])
def test_an_inpatient_only_pharmacy_may_supply_7_days_at_discharge(
    days: int, outcome: Outcome
) -> None:
    request = dispense("2022-03-02", pharmacy_npi=INPATIENT_ONLY, discharge=True, days_supply=days)
    decision = run(well(), request)
    assert decision.outcome == outcome and decision.max_days_supply == 7
    if outcome == Outcome.DENIED:
        assert codes(decision.reasons) == {"DISCHARGE_SUPPLY_EXCEEDS_LIMIT"}


def test_a_dually_enrolled_pharmacy_dispenses_a_discharge_as_outpatient_without_cap() -> None:
    decision = run(
        well(), dispense("2022-03-02", discharge=True, days_supply=30, setting=Setting.INPATIENT)
    )
    assert decision.outcome == Outcome.AUTHORIZED and decision.max_days_supply == 30


@pytest.mark.parametrize(("day", "cap"), [("2022-11-01", 7), ("2022-11-02", 14)])
def test_the_2022_discretion_cap_follows_the_monitoring_frequency(day: str, cap: int) -> None:
    snapshot = patient_file(
        enrolled_on="2022-10-20",
        ancs=(anc("2000", day),),
        psfs=(psf("2022-10-25", monitoring_frequency=MonitoringFrequency.EVERY_2_WEEKS),),
    )
    request = dispense(day, pharmacy_npi=INPATIENT_ONLY, discharge=True, days_supply=14)
    decision = run(snapshot, request, DISCRETION)
    assert decision.max_days_supply == cap
    assert (decision.outcome == Outcome.AUTHORIZED) is (cap == 14)


def test_discretion_turns_administrative_failures_into_warnings() -> None:
    decision = run(
        patient_file(enrolled_on=None, ancs=(anc("2000", "2022-03-01"),)),
        dispense("2022-03-02"),
        DISCRETION,
    )
    assert decision.outcome == Outcome.AUTHORIZED and decision.rda is not None
    assert "PATIENT_NOT_ENROLLED" in codes(decision.warnings)


def test_the_label_pack_never_denies_and_issues_no_rda() -> None:
    snapshot = patient_file(enrolled_on=None, ancs=(anc("400", "2025-03-01"),))
    decision = run(snapshot, dispense("2025-03-02", pharmacy_npi="1999999984"), LABEL)
    assert (
        decision.outcome == Outcome.AUTHORIZED and decision.rda is None and decision.reasons == ()
    )
    assert "ANC_BELOW_THRESHOLD" in codes(decision.warnings)


def test_an_overdue_anc_is_a_warning_only() -> None:
    snapshot = patient_file(
        enrolled_on="2022-03-01", ancs=(anc("2000", "2022-03-01"),), treatment_start=None
    )
    decision = run(snapshot, dispense("2022-03-09"))
    assert decision.outcome == Outcome.AUTHORIZED and "ANC_OVERDUE" in codes(decision.warnings)


def test_under_discretion_an_override_is_not_spent_on_an_administrative_failure() -> None:
    decision = run(
        out_of_window(), dispense("2022-03-02", override=OVERRIDE), DISCRETION, override_anc=CURRENT
    )
    assert decision.outcome == Outcome.AUTHORIZED and not decision.override_used
    assert "PSF_OUT_OF_WINDOW" in codes(decision.warnings) and decision.reasons == ()
