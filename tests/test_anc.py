"""docs/rules.md §1 (units, plausibility, derivation, statuses) and §2 (categories)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from rems_core.anc import specimen_ancs
from rems_core.model import AncCategory, AncResult, Designation, LabResult, ResultStatus
from tests.builders import REMS, at

GENERAL, BEN, HOSPICE = Designation.GENERAL, Designation.BEN, Designation.HOSPICE


def one(
    value: str,
    unit: str = "/uL",
    code: str = "751-8",
    designation: Designation = GENERAL,
    **kw: Any,
) -> AncResult:
    results = specimen_ancs(
        REMS, designation, [LabResult(code, value, unit, at("2022-03-01"), **kw)]
    )
    assert len(results) == 1
    return results[0]


def warning_codes(result: AncResult) -> set[str]:
    return {w.code for w in result.warnings}


@pytest.mark.parametrize(
    "unit", ["10*3/uL", "K/uL", "x10E3/uL", "10^3/uL", "thou/uL", "10*9/L", "x10^9/L", "G/L"]
)
def test_thousand_per_microlitre_units_multiply_by_1000(unit: str) -> None:
    assert one("1.8", unit).anc == 1800


@pytest.mark.parametrize("unit", ["/uL", "cells/uL", "{cells}/uL", "/mm3", "cells/mm3"])
def test_per_microlitre_units_are_taken_as_they_are(unit: str) -> None:
    assert one("1800", unit).anc == 1800


def test_per_litre_millions_multiply_by_a_thousandth() -> None:
    assert one("1800", "10*6/L").anc == 1800  # 10⁶/L is one per µL


def test_unit_spelling_with_micro_sign_and_case_is_recognised() -> None:
    assert one("1.8", "k/µL").anc == 1800


def test_unknown_unit_is_an_error_not_a_guess() -> None:
    result = one("1.8", "mmol/L")
    assert result.anc is None and not result.usable
    assert warning_codes(result) == {"ANC_UNIT_UNKNOWN"}


def test_non_numeric_and_comparator_values_are_invalid() -> None:
    assert warning_codes(one("abc")) == {"ANC_VALUE_INVALID"}
    assert warning_codes(one("<500")) == {"ANC_VALUE_INVALID"}
    assert "is not a number" in one("abc").warnings[0].text


@pytest.mark.parametrize(
    ("value", "unit", "designation", "said", "below"),
    [
        ("<500", "/uL", GENERAL, "less than 500 /uL", "1,000/µL, general"),
        ("<0.5", "10*3/uL", BEN, "less than 0.5 10*3/uL", "500/µL, ben"),
        ("<0.6", "10*3/uL", BEN, "less than 0.6 10*3/uL", None),  # may be 500–599
        ("<0.5", "10*3/uL", HOSPICE, "less than 0.5 10*3/uL", "1,000/µL, hospice"),
        ("<=1000", "/uL", GENERAL, "at most 1000 /uL", None),  # may be 1000 itself
        ("<1000", "/uL", GENERAL, "less than 1000 /uL", "1,000/µL, general"),
        ("> 100000", "/uL", GENERAL, "more than 100000 /uL", None),
        ("<500", "mmol/L", GENERAL, "less than 500 mmol/L", None),  # no count unit: no claim
    ],
)
def test_a_censored_value_says_what_it_is_and_whether_it_is_below_the_threshold(
    value: str, unit: str, designation: Designation, said: str, below: str | None
) -> None:
    """Labs write results below what they measure as `<500`: a limit, never a usable ANC, but
    one that can be certainly below the rationale threshold, and the pharmacist is told so."""
    result = one(value, unit, designation=designation)
    assert result.anc is None and not result.usable and result.category is None
    assert warning_codes(result) == {"ANC_VALUE_INVALID"}
    text = result.warnings[0].text
    assert "is censored" in text and said in text and "not a number" in text
    assert "is not a number" not in text
    assert ("below the rationale threshold" in text) == (below is not None)
    if below is not None:
        assert f"({below})" in text


@pytest.mark.parametrize(
    ("value", "unit", "suspect"),
    [
        ("29", "/uL", True),
        ("30", "/uL", False),
        ("100.1", "10*3/uL", True),
        ("100", "10*3/uL", False),
    ],
)
def test_implausible_magnitudes_are_flagged_and_not_used(
    value: str, unit: str, suspect: bool
) -> None:
    result = one(value, unit)
    assert ("ANC_UNIT_SUSPECT" in warning_codes(result)) is suspect
    assert result.usable is not suspect


def test_values_above_100000_per_microlitre_are_rejected() -> None:
    result = one("100001")
    assert not result.usable and "ANC_OUT_OF_RANGE" in warning_codes(result)
    assert one("100000").usable


def test_negative_values_are_rejected() -> None:
    assert "ANC_OUT_OF_RANGE" in warning_codes(one("-1", "10*3/uL"))


@pytest.mark.parametrize(
    ("value", "designation", "category", "below_threshold"),
    [
        ("1500", GENERAL, AncCategory.NORMAL, False),
        ("1499", GENERAL, AncCategory.MILD, False),
        ("1000", GENERAL, AncCategory.MILD, False),
        ("999", GENERAL, AncCategory.MODERATE, True),
        ("500", GENERAL, AncCategory.MODERATE, True),
        ("499", GENERAL, AncCategory.SEVERE, True),
        ("1000", BEN, AncCategory.NORMAL, False),
        ("999", BEN, AncCategory.BEN_NEUTROPENIA, False),
        ("500", BEN, AncCategory.BEN_NEUTROPENIA, False),
        ("499", BEN, AncCategory.SEVERE, True),
        ("999", HOSPICE, AncCategory.MODERATE, True),
    ],
)
def test_categories_and_rationale_threshold_have_inclusive_lower_bounds(
    value: str, designation: Designation, category: AncCategory, below_threshold: bool
) -> None:
    result = one(value, designation=designation)
    assert result.category == category
    assert ("ANC_BELOW_THRESHOLD" in warning_codes(result)) is below_threshold


def test_conversion_rounds_half_up_after_exact_decimal_arithmetic() -> None:
    assert one("0.9995", "10*3/uL").anc == 1000
    assert one("0.9994", "10*3/uL").anc == 999


def specimen(
    *observations: tuple[str, str, str], status: ResultStatus = ResultStatus.FINAL
) -> list[LabResult]:
    drawn = at("2022-03-01T08:00")
    return [
        LabResult(code, value, unit, drawn, status, "ACC1") for code, value, unit in observations
    ]


def test_derived_anc_from_wbc_and_neutrophil_percent_rounds_half_up() -> None:
    (result,) = specimen_ancs(
        REMS, GENERAL, specimen(("6690-2", "3.3", "10*3/uL"), ("770-8", "30.3", "%"))
    )
    assert result.anc == 1000 and result.derived and result.category == AncCategory.MILD


def test_derived_anc_from_segmented_and_bands() -> None:
    (result,) = specimen_ancs(
        REMS,
        GENERAL,
        specimen(("6690-2", "4.0", "10*3/uL"), ("26505-8", "40", "%"), ("764-1", "5", "%")),
    )
    assert result.anc == 1800


def test_bands_are_never_added_to_a_total_neutrophil_percent() -> None:
    (result,) = specimen_ancs(
        REMS,
        GENERAL,
        specimen(("6690-2", "4.0", "10*3/uL"), ("770-8", "40", "%"), ("764-1", "5", "%")),
    )
    assert result.anc == 1600


def test_a_direct_anc_wins_over_derivation() -> None:
    (result,) = specimen_ancs(
        REMS,
        GENERAL,
        specimen(("751-8", "2.0", "10*3/uL"), ("6690-2", "4.0", "10*3/uL"), ("770-8", "40", "%")),
    )
    assert result.anc == 2000 and not result.derived


def test_percentages_must_be_in_percent() -> None:
    (result,) = specimen_ancs(
        REMS, GENERAL, specimen(("6690-2", "4.0", "10*3/uL"), ("770-8", "0.4", "1"))
    )
    assert not result.usable and "ANC_UNIT_UNKNOWN" in warning_codes(result)


def test_wbc_alone_yields_no_anc() -> None:
    assert specimen_ancs(REMS, GENERAL, specimen(("6690-2", "4.0", "10*3/uL"))) == []


def test_preliminary_results_are_reported_but_never_usable() -> None:
    result = one("800", status=ResultStatus.PRELIMINARY)
    assert result.category == AncCategory.MODERATE and not result.usable
    assert "RESULT_PRELIMINARY" in warning_codes(result)


def test_a_derivation_from_a_preliminary_input_is_preliminary() -> None:
    observations = [
        LabResult("6690-2", "4.0", "10*3/uL", at("2022-03-01"), ResultStatus.FINAL, "A"),
        LabResult("770-8", "40", "%", at("2022-03-01"), ResultStatus.PRELIMINARY, "A"),
    ]
    (result,) = specimen_ancs(REMS, GENERAL, observations)
    assert result.anc == 1600 and not result.usable


def test_a_first_result_below_normal_advises_a_repeat_within_24_hours() -> None:
    from rems_core.anc import with_repeat_advice

    normal, low, lower = replace(one("1600"), drawn=at("2022-02-27")), one("1200"), one("900")
    assert "repeat within 24 h" in with_repeat_advice(REMS, low, [normal]).advice
    assert "repeat within" not in with_repeat_advice(REMS, normal, []).advice
    earlier_low = replace(low, drawn=at("2022-02-28"))
    assert "repeat within" not in with_repeat_advice(REMS, lower, [earlier_low]).advice


@pytest.mark.parametrize(("value", "suspect"), [("29", True), ("30", False)])
def test_counts_per_litre_in_millions_below_30_per_microlitre_are_suspect(
    value: str, suspect: bool
) -> None:
    assert ("ANC_UNIT_SUSPECT" in warning_codes(one(value, "10*6/L"))) is suspect


def test_derivation_inputs_must_share_the_collection_time() -> None:
    observations = [
        LabResult("6690-2", "2.0", "10*3/uL", at("2022-03-01T08:00"), specimen="A"),
        LabResult("770-8", "20", "%", at("2022-03-01T08:45"), specimen="A"),
    ]
    assert specimen_ancs(REMS, GENERAL, observations) == []


def test_an_out_of_range_value_is_rejected_not_merely_suspect() -> None:
    assert warning_codes(one("-5")) == {"ANC_OUT_OF_RANGE"}


def test_bands_alone_derive_nothing() -> None:
    assert (
        specimen_ancs(REMS, GENERAL, specimen(("6690-2", "5.0", "10*3/uL"), ("764-1", "5", "%")))
        == []
    )


def test_segmented_alone_derive_without_bands() -> None:
    (result,) = specimen_ancs(
        REMS, GENERAL, specimen(("6690-2", "5.0", "10*3/uL"), ("26505-8", "40", "%"))
    )
    assert result.anc == 2000
