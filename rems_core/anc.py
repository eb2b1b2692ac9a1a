"""§1–§2: from reported observations to ANC results per µL, with categories and warnings.

Values are read as decimals from their text, converted and derived exactly, then rounded half up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal

from rems_core.codes import Code, finding
from rems_core.model import (
    AncCategory,
    AncResult,
    Designation,
    Finding,
    LabResult,
    ResultStatus,
    decimal_or_none,
)
from rems_core.rulepack import RulePack

HUNDRED = Decimal(100)
#: No reported count or percentage comes near 10^12, nor any ANC near 10^9 per µL: beyond them a
#: value is out of range before any arithmetic (which could overflow) and is never kept as a count.
LARGEST_EXPONENT = 12
LARGEST_ANC = Decimal(10**9)
_WORD = re.compile(r"[^\W_]+")  # letters and digits: "LYM#" is the word LYM
LABEL_SHOWN = 80  # characters of a result's text quoted in a finding


@dataclass(frozen=True)
class Reading:
    """One observation read against the rules: a count per µL or a percentage, or why not."""

    value: Decimal | None
    warnings: tuple[Finding, ...] = ()


#: A censored value, as labs write results beyond what they measure (`<500`, `>= 100000`).
COMPARATORS = {"<=": "at most", ">=": "at least", "<": "less than", ">": "more than"}


def censored(text: str) -> tuple[str, Decimal] | None:
    """The comparator and limit of a censored value (`<500` → ("<", 500)); None otherwise."""
    stripped = text.strip()
    for comparator in COMPARATORS:  # the two-character ones first
        if stripped.startswith(comparator):
            limit = decimal_or_none(stripped[len(comparator) :])
            return (comparator, limit) if limit is not None else None
    return None


def value_invalid(
    pack: RulePack, result: LabResult, designation: Designation | None = None
) -> Finding:
    """ANC_VALUE_INVALID: a value that is no number. A censored one says what it is — a limit,
    not a count, so never usable — and, for an ANC (``designation`` given) whose limit is below
    the patient's rationale threshold, that it is certainly below it."""
    found = censored(result.value)
    if found is None:
        return finding(Code.ANC_VALUE_INVALID, value=result.value, code=result.code)
    comparator, limit = found
    unit = f" {result.unit}" if result.unit.strip() else ""
    text = (
        f"Value {result.value!r} for {result.code} is censored ({COMPARATORS[comparator]} "
        f"{limit}{unit}): a limit, not a number; the result is not used."
    )
    factor = count_factor(pack, result.unit)
    if designation is not None and factor is not None and comparator in ("<", "<="):
        threshold = rationale_threshold(pack, designation)
        bound = limit * factor
        if bound < threshold or (comparator == "<" and bound == threshold):
            text += (
                f" It is below the rationale threshold ({threshold:,}/µL, {designation.value}):"
                " ask the lab for the count, or draw again."
            )
    return Finding(str(Code.ANC_VALUE_INVALID), text)


def _unit_key(unit: str) -> str:
    """µ (U+00B5) and μ (U+03BC) read as u, spaces removed."""
    return "".join(unit.replace("µ", "u").replace("μ", "u").split())


def count_factor(pack: RulePack, unit: str) -> Decimal | None:
    """The factor to per µL of a count unit; None for a unit that is no count unit. A spelling
    matches in any case unless the pack says its case matters (G/L is giga, g/L grams)."""
    units = pack.count_units.value
    if unit in units:
        return units[unit]
    wanted = _unit_key(unit)
    case_matters = pack.unit_case_matters.value
    for name, factor in units.items():
        key = _unit_key(name)
        if key == wanted or (name not in case_matters and key.casefold() == wanted.casefold()):
            return factor
    return None


def is_known_unit(pack: RulePack, unit: str) -> bool:
    """A count unit or a percentage unit of the pack."""
    return count_factor(pack, unit) is not None or unit.strip() in pack.percent_units.value


def other_analyte(pack: RulePack, code: str, texts: Iterable[str]) -> str | None:
    """§1: the analyte a result's texts plainly name when it is not the one its code names, by
    whole words in any case; None when they name none, or name the code's own analyte too (a
    LOINC long name of a neutrophil % names leukocytes as well)."""
    own = _analyte_of(pack, code)
    if own is None:
        return None
    words = {word.casefold() for text in texts for word in _WORD.findall(text)}
    named = [
        analyte
        for analyte, names in pack.analyte_words.value.items()
        if words & {name.casefold() for name in names}
    ]
    return None if own in named or not named else named[0]


def code_text_mismatch(pack: RulePack, code: str, texts: Iterable[str]) -> Finding | None:
    """CODE_TEXT_MISMATCH for an ANC-relevant code whose text names another analyte."""
    labels = [text.strip() for text in texts if text.strip()]
    analyte = other_analyte(pack, code, labels)
    if analyte is None:
        return None
    label = " / ".join(labels)[:LABEL_SHOWN]
    return finding(Code.CODE_TEXT_MISMATCH, code=code, label=label, analyte=analyte)


def _analyte_of(pack: RulePack, code: str) -> str | None:
    roles = pack.loinc.value.model_dump()
    role = next((role for role, codes in roles.items() if code in codes), None)
    return getattr(pack.analyte_of_code.value, role) if role else None


def read_count(
    pack: RulePack, result: LabResult, designation: Designation | None = None
) -> Reading:
    """A cell count (ANC or WBC) per µL, exact; ``designation``: the patient's, for an ANC (a
    censored value below its rationale threshold says so)."""
    value = decimal_or_none(result.value)
    if value is None:
        return Reading(None, (value_invalid(pack, result, designation),))
    if value.adjusted() > LARGEST_EXPONENT:
        return Reading(None, (out_of_range(pack, value),))
    factor = count_factor(pack, result.unit)
    if factor is None:
        return Reading(None, (finding(Code.ANC_UNIT_UNKNOWN, unit=result.unit, code=result.code),))
    per_ul = value * factor
    for bound in pack.suspect_magnitude.value:
        if factor == bound.unit_factor and (
            (bound.below is not None and value < bound.below)
            or (bound.above is not None and value > bound.above)
        ):
            suspect = finding(Code.ANC_UNIT_SUSPECT, value=result.value, unit=result.unit)
            return Reading(per_ul, (suspect,))
    return Reading(per_ul)


def read_percent(pack: RulePack, result: LabResult) -> Reading:
    value = decimal_or_none(result.value)
    if value is None:
        return Reading(None, (value_invalid(pack, result),))
    if value.adjusted() > LARGEST_EXPONENT:
        return Reading(None, (out_of_range(pack, value),))
    if result.unit.strip() not in pack.percent_units.value:
        return Reading(None, (finding(Code.ANC_UNIT_UNKNOWN, unit=result.unit, code=result.code),))
    return Reading(value)


def out_of_range(pack: RulePack, value: Decimal) -> Finding:
    """ANC_OUT_OF_RANGE for a number too large to be kept as a count (shown in E notation)."""
    low, high = pack.anc_range.value.min, pack.anc_range.value.max
    return finding(Code.ANC_OUT_OF_RANGE, anc=f"{value:.3E}", low=low, high=high)


def round_half_up(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def category_of(pack: RulePack, anc: int, designation: Designation) -> tuple[AncCategory, str]:
    for band in pack.anc_categories.value[designation.value]:
        if anc >= band.from_:
            return band.category, band.advice
    lowest = pack.anc_categories.value[designation.value][-1]
    return lowest.category, lowest.advice


def rationale_threshold(pack: RulePack, designation: Designation) -> int:
    return getattr(pack.rationale_below.value, designation.value)


def below_threshold_finding(
    pack: RulePack, anc: AncResult, designation: Designation, drawn: str | None = None
) -> Finding:
    """``drawn``: the draw as the reader should see it (the site's date); default UTC time."""
    return finding(
        Code.ANC_BELOW_THRESHOLD,
        anc=anc.anc,
        drawn=drawn or f"{anc.drawn:%Y-%m-%d %H:%M} UTC",
        threshold=rationale_threshold(pack, designation),
        population=designation.value,
    )


def _judge(
    pack: RulePack,
    designation: Designation,
    per_ul: Decimal | None,
    warnings: tuple[Finding, ...],
    source: LabResult,
    derived: bool,
) -> AncResult:
    """Round, range-check, categorize and flag one ANC."""
    status_warnings = {
        ResultStatus.PRELIMINARY: (finding(Code.RESULT_PRELIMINARY),),
    }.get(source.status, ())
    if per_ul is not None and abs(per_ul) >= LARGEST_ANC:
        kept = tuple(w for w in warnings if w.code != Code.ANC_UNIT_SUSPECT)
        warnings, per_ul = (*kept, out_of_range(pack, per_ul)), None
    anc = round_half_up(per_ul) if per_ul is not None else None
    usable = anc is not None and not warnings and not status_warnings
    low, high = pack.anc_range.value.min, pack.anc_range.value.max
    suspect = any(w.code == Code.ANC_UNIT_SUSPECT for w in warnings)
    if anc is not None and (anc < low or (anc > high and not suspect)):
        # A negative count is impossible in any unit: rejected, not "suspect, confirm it". A huge
        # one in a 10*3/uL-class unit is most likely a count per µL with the wrong unit: suspect.
        kept = tuple(w for w in warnings if w.code != Code.ANC_UNIT_SUSPECT)
        warnings = (*kept, finding(Code.ANC_OUT_OF_RANGE, anc=anc, low=low, high=high))
        usable = False
    category, advice = (None, "")
    if anc is not None and low <= anc <= high:
        category, advice = category_of(pack, anc, designation)
    result = AncResult(
        anc=anc,
        drawn=source.drawn,
        category=category,
        usable=usable,
        derived=derived,
        specimen=source.specimen,
        code=source.code,
        status=source.status,
        warnings=(*warnings, *status_warnings),
        advice=advice,
    )
    if usable and anc < rationale_threshold(pack, designation):
        result = replace(
            result, warnings=(*result.warnings, below_threshold_finding(pack, result, designation))
        )
    return result


def _first(results: Iterable[LabResult], codes: list[str]) -> LabResult | None:
    return next((r for r in results if r.code in codes), None)


def _derive(
    pack: RulePack, designation: Designation, specimen: list[LabResult]
) -> AncResult | None:
    """WBC × neutrophil % / 100, or WBC × (segs % + bands %) / 100; never bands on a total %."""
    codes = pack.loinc.value
    wbc = _first(specimen, codes.wbc)
    if wbc is None:
        return None
    specimen = [r for r in specimen if r.drawn == wbc.drawn]  # one specimen, one collection time
    neutrophils = _first(specimen, codes.neutrophils_pct)
    segmented = _first(specimen, codes.segmented_pct)
    if neutrophils is not None:
        parts = [neutrophils]
    elif segmented is not None:  # bands are added to segmented neutrophils, never used alone
        bands = _first(specimen, codes.bands_pct)
        parts = [segmented, *([bands] if bands else [])]
    else:
        return None
    wbc_reading = read_count(pack, wbc)
    readings = [read_percent(pack, p) for p in parts]
    warnings = tuple(w for r in (wbc_reading, *readings) for w in r.warnings)
    per_ul = None
    if wbc_reading.value is not None and all(r.value is not None for r in readings):
        per_ul = wbc_reading.value * sum(r.value for r in readings) / HUNDRED
    least_final = next((r for r in (wbc, *parts) if r.status == ResultStatus.PRELIMINARY), wbc)
    source = replace(least_final, code="derived", drawn=wbc.drawn, specimen=wbc.specimen)
    return _judge(pack, designation, per_ul, warnings, source, derived=True)


def same_result(pack: RulePack, a: LabResult, b: LabResult) -> bool:
    """§5.3: the same analyte, draw time and value (compared per µL or in %) is one result."""
    if a.code != b.code or a.drawn != b.drawn:
        return False
    codes = pack.loinc.value
    is_percent = a.code in {*codes.neutrophils_pct, *codes.segmented_pct, *codes.bands_pct}
    read = read_percent if is_percent else read_count
    first, second = read(pack, a), read(pack, b)
    return first.value is not None and first.value == second.value


def relevant_codes(pack: RulePack) -> set[str]:
    """The LOINC codes the REMS reads: ANCs and the inputs of a derived ANC."""
    codes = pack.loinc.value
    return {*codes.anc, *codes.wbc, *codes.neutrophils_pct, *codes.segmented_pct, *codes.bands_pct}


def is_anc_relevant(pack: RulePack, code: str) -> bool:
    return code in relevant_codes(pack)


def specimen_ancs(
    pack: RulePack, designation: Designation, current: list[LabResult]
) -> list[AncResult]:
    """The ANC results one specimen yields from its current (not withdrawn) observations.

    Direct ANCs are taken as they are; only without one is the ANC derived.
    """
    direct = [r for r in current if r.code in pack.loinc.value.anc]
    if direct:
        results = []
        for result in direct:
            reading = read_count(pack, result, designation)
            results.append(
                _judge(pack, designation, reading.value, reading.warnings, result, False)
            )
        return results
    derived = _derive(pack, designation, current)
    return [derived] if derived is not None else []


def cancelled(result: LabResult) -> AncResult:
    return AncResult(
        anc=None,
        drawn=result.drawn,
        category=None,
        usable=False,
        specimen=result.specimen,
        code=result.code,
        status=ResultStatus.CANCELLED,
        warnings=(finding(Code.RESULT_CANCELLED),),
    )


def with_repeat_advice(pack: RulePack, result: AncResult, earlier: list[AncResult]) -> AncResult:
    """§2: a first result below normal should be repeated (within 24 h by default)."""
    if not result.usable or result.category in (None, AncCategory.NORMAL):
        return result
    before = [a for a in earlier if a.usable and a.drawn < result.drawn]
    if before and max(before, key=lambda a: a.drawn).category != AncCategory.NORMAL:
        return result
    hours = pack.repeat_first_low_within.value
    advice = f"{result.advice} First result below normal: repeat within {hours} h."
    return replace(result, advice=advice.strip())
