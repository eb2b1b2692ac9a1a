"""Observation (ANC, WBC, neutrophil %) → a lab result (contracts.md §5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, tzinfo
from decimal import Decimal
from typing import Any

from mappings.fhir.outcome import Issue
from mappings.fhir.references import SubjectRef, identifier_key, subject_ref
from rems_core.model import LabResult, ResultStatus

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


def loinc_code(concept: Any) -> str | None:
    for coding in getattr(concept, "coding", None) or []:
        if coding.system == LOINC and coding.code:
            return str(coding.code)
    return None


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
    """(value, unit): UCUM code as the unit (the `unit` text is display only); a comparator is
    kept in the value, so the rules flag it instead of using it."""
    value = quantity.value
    text = format(value, "f") if isinstance(value, Decimal) else str(value)
    if quantity.comparator:
        text = f"{quantity.comparator}{text}"
    unit = quantity.code if quantity.code and quantity.system in (UCUM, None) else ""
    return text, unit or ""


def read_observation(
    observation: Any,
    relevant: set[str],
    tz: tzinfo,
    specimen_fallback: str | None = None,
) -> ObservationReading:
    """``observation`` is a validated R4B Observation model."""
    code = loinc_code(observation.code)
    subject = subject_ref(observation.subject)
    effective = draw_time(observation, tz)
    reading = ObservationReading(
        subject, code, None, identifier_key(observation.identifier), effective
    )
    if subject is None:
        reading.problems.append(
            Issue(
                "error",
                "required",
                "subject must be a Patient: a logical reference by identifier or Patient/{id}",
                ("Observation.subject",),
            )
        )
    if code is None or code not in relevant:
        return reading  # stored, but not a result the REMS reads
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
        return f"{identifier.system or ''}|{identifier.value}"
    return None
