"""Observation (ANC, WBC, neutrophil %) → a lab result (docs/contracts.md §5)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, tzinfo
from decimal import Decimal
from typing import Any

from mappings.fhir.outcome import Issue
from mappings.fhir.references import SubjectRef, identifier_key, subject_ref, token
from rems_core.anc import code_text_mismatch, relevant_codes
from rems_core.model import Finding, LabResult, ResultStatus
from rems_core.rulepack import RulePack

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
STATUS = {
    "final": ResultStatus.FINAL,
    "amended": ResultStatus.CORRECTED,
    "corrected": ResultStatus.CORRECTED,
    "preliminary": ResultStatus.PRELIMINARY,
    "cancelled": ResultStatus.CANCELLED,
    "entered-in-error": ResultStatus.CANCELLED,
}


@dataclass
class ObservationReading:
    """What one Observation says, for the rules: the result (None when it is not one the REMS
    reads), who it is about, and what was wrong with it."""

    subject: SubjectRef | None
    code: str | None  # the LOINC code
    result: LabResult | None
    identifier: str | None  # business identifier "system|value"
    effective: datetime | None
    problems: list[Issue] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)  # the rules' findings on it, if unread


OBSERVATION_STATUS = {
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
}  # FHIR R4 observation-status (a required binding)
_LOINC_FORMAT = re.compile(r"^(\d{1,7})-(\d)$")


def loinc_check_digit_ok(code: str) -> bool:
    """LOINC codes end in a mod-10 check digit (the Luhn scheme over the digits before it)."""
    match = _LOINC_FORMAT.match(code)
    if match is None:
        return False
    digits = [int(d) for d in match.group(1)]
    total = 0
    for position, digit in enumerate(reversed(digits)):
        doubled = digit * 2 if position % 2 == 0 else digit
        total += doubled - 9 if doubled > 9 else doubled
    return (10 - total % 10) % 10 == int(match.group(2))


def coding_problems(observation: Any) -> list[Issue]:
    """Codes a FHIR client must get right: the status value set, LOINC codes that are LOINC
    codes, and quantities in UCUM. (fhir.resources checks structure, not bindings.)"""
    problems = []
    if observation.status not in OBSERVATION_STATUS:
        text = f"status must be one of {', '.join(sorted(OBSERVATION_STATUS))}"
        problems.append(Issue("error", "code-invalid", text, ("Observation.status",)))
    for n, coding in enumerate(getattr(observation.code, "coding", None) or []):
        if coding.system == LOINC and not loinc_check_digit_ok(str(coding.code or "")):
            text = "not a LOINC code (NNNNN-C with its check digit)"
            problems.append(
                Issue("error", "code-invalid", text, (f"Observation.code.coding[{n}].code",))
            )
    quantity = observation.valueQuantity
    if quantity is not None and quantity.system not in (None, UCUM):
        text = f"units must be UCUM ({UCUM} with the unit in code)"
        problems.append(Issue("error", "code-invalid", text, ("Observation.valueQuantity.system",)))
    return problems


def loinc_code(concept: Any) -> str | None:
    for coding in getattr(concept, "coding", None) or []:
        if coding.system == LOINC and coding.code:
            return str(coding.code)
    return None


def code_texts(concept: Any) -> list[str]:
    """`code.text` and each coding's `display`: what a sender says the code is."""
    displays = [c.display for c in getattr(concept, "coding", None) or [] if c.display]
    return [str(t) for t in (getattr(concept, "text", None), *displays) if t]


def draw_time(observation: Any, tz: tzinfo) -> datetime | None:
    """effectiveDateTime, else effectivePeriod.start; a bare date is midnight in the site's zone."""
    moment = observation.effectiveDateTime
    if moment is None and observation.effectivePeriod is not None:
        moment = observation.effectivePeriod.start
    if moment is None:
        return None
    if not isinstance(moment, datetime) and isinstance(moment, date):
        moment = datetime.combine(moment, time(), tz)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment.astimezone(UTC)


def quantity_text(quantity: Any) -> tuple[str, str]:
    """(value, unit): the UCUM code as the unit, else the `unit` text (read against the same unit
    table); a comparator is kept in the value, so the rules flag it instead of using it."""
    value = quantity.value
    text = format(value, "f") if isinstance(value, Decimal) else str(value)
    if quantity.comparator:
        text = f"{quantity.comparator}{text}"
    unit = quantity.code if quantity.code and quantity.system in (UCUM, None) else ""
    return text, unit or quantity.unit or ""


def read_observation(
    observation: Any,
    pack: RulePack,
    tz: tzinfo,
    specimen_fallback: str | None = None,
) -> ObservationReading:
    """``observation`` is a validated R4B Observation model; ``pack`` the codes, units and
    analyte words it is read with."""
    code = loinc_code(observation.code)
    subject = subject_ref(observation.subject)
    effective = draw_time(observation, tz)
    reading = ObservationReading(
        subject, code, None, identifier_key(observation.identifier), effective
    )
    reading.problems += coding_problems(observation)
    if subject is None:
        reading.problems.append(
            Issue(
                "error",
                "required",
                "subject must be a Patient: a logical reference by identifier or Patient/{id}",
                ("Observation.subject",),
            )
        )
    if code is None or code not in relevant_codes(pack):
        return reading  # stored, but not a result the REMS reads
    mismatch = code_text_mismatch(pack, code, code_texts(observation.code))
    if mismatch is not None:  # stored, reported, not used
        reading.warnings.append(mismatch)
        return reading
    status = STATUS.get(observation.status)
    if status is None:
        return reading  # registered: no result yet
    if effective is None:
        reading.problems.append(
            Issue(
                "error", "required", "a lab result needs its draw time", ("Observation.effective",)
            )
        )
        return reading
    value, unit = _value(observation)
    reading.result = LabResult(
        code, value, unit, effective, status, _specimen(observation) or specimen_fallback
    )
    return reading


def _value(observation: Any) -> tuple[str, str]:
    if observation.valueQuantity is not None:
        return quantity_text(observation.valueQuantity)
    if observation.valueString is not None:
        return str(observation.valueString), ""
    return "", ""


def _specimen(observation: Any) -> str | None:
    specimen = observation.specimen
    identifier = getattr(specimen, "identifier", None) if specimen is not None else None
    if identifier is not None and identifier.value:
        return token(identifier.system, identifier.value)
    return None


#: Units the gateway writes as UCUM codes when an HL7 result is shown as an Observation; any
#: other unit is kept as the sender's text only.
UCUM_COUNT_UNITS = {"/uL", "10*3/uL", "10*9/L", "10*6/L", "/mm3", "{cells}/uL", "%"}
LAB_CATEGORY = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "laboratory",
        }
    ]
}
MAX_SHOWN = Decimal(10**12)  # no count is larger: such a value is shown as the text it was
MIN_SHOWN = Decimal("1e-12")  # nor this small (as a float it would read 0)
RESULT_STATUS_CODE = {
    ResultStatus.FINAL: "final",
    ResultStatus.CORRECTED: "corrected",
    ResultStatus.PRELIMINARY: "preliminary",
    ResultStatus.CANCELLED: "cancelled",
}


def lab_observation(
    result: LabResult, patient_id: str, source: str, issued: datetime
) -> dict[str, Any]:
    """A lab result that arrived another way (HL7 v2, a PSF, a scenario) as an Observation of
    the patient's FHIR record; ``source`` (meta.source) names the sender and message."""
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": {"source": source},
        "status": RESULT_STATUS_CODE[result.status],
        "category": [LAB_CATEGORY],
        "code": {"coding": [{"system": LOINC, "code": result.code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": result.drawn.isoformat(),
        "issued": issued.isoformat(),
    }
    body |= _value_element(result.value, result.unit)
    if result.specimen:
        body["specimen"] = {"identifier": {"value": result.specimen}}
    return body


def _value_element(value: str, unit: str) -> dict[str, Any]:
    try:
        number = Decimal(value.strip())
    except ArithmeticError:
        return {"valueString": value} if value else {}
    if not number.is_finite() or not (
        number.is_zero() or MIN_SHOWN < number.copy_abs() < MAX_SHOWN
    ):
        return {"valueString": value}
    whole = number == number.to_integral()
    quantity: dict[str, Any] = {"value": int(number) if whole else float(number)}
    if unit:
        quantity["unit"] = unit
        if unit in UCUM_COUNT_UNITS:
            quantity |= {"system": UCUM, "code": unit}
    return {"valueQuantity": quantity}
