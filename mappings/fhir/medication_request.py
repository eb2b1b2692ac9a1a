"""MedicationRequest ⇄ a dispense request and its decision (docs/contracts.md §5, docs/rules.md §6).

In: subject (identifier or Patient/{id}), requester and dispenseRequest.performer by NPI,
expectedSupplyDuration (days, weeks), category (inpatient | outpatient | community | discharge),
identifier (the request id), the RxNorm coding of the medication, and the pharmacist override
extension. The dispense date is the clinical now of the request, not ``authoredOn`` (when the
prescription was written: it is kept, never judged). Out: the decision as an extension.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from mappings.fhir.observation import quantity_text
from mappings.fhir.outcome import REMS_CODES, Issue
from mappings.fhir.references import NPI_SYSTEM, SubjectRef, npi_of, subject_ref, token
from rems_core.model import (
    Decision,
    DispenseRequest,
    Finding,
    Outcome,
    Override,
    ReportedAnc,
    Setting,
)

CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/medicationrequest-category"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
# The scenario runner's default drug: a request posted here without an RxNorm coding is taken to
# be clozapine (this endpoint is the clozapine REMS), as a scenario step without `drug` is.
DEFAULT_RXNORM = "197536"
DECISION_EXTENSION = "urn:rems-gateway:fhir:rems-decision"
OVERRIDE_EXTENSION = "urn:rems-gateway:fhir:pharmacist-override"
RDA_SYSTEM = "urn:rems-gateway:rda"
SETTINGS = {"inpatient": Setting.INPATIENT, "outpatient": Setting.OUTPATIENT}
SETTINGS["community"] = Setting.OUTPATIENT
DAYS_PER_UNIT = {"d": 1, "day": 1, "days": 1, "wk": 7, "week": 7, "weeks": 7}


@dataclass
class MedicationRequestReading:
    """What one MedicationRequest asks: the request (None when it cannot be decided), its
    subject and business identifier, and what was wrong with it."""

    subject: SubjectRef | None
    identifier: str | None  # "system|value": the resource's business identifier
    request: DispenseRequest | None
    problems: list[Issue] = field(default_factory=list)


def _problem(path: str, text: str, code: str = "required") -> Issue:
    return Issue("error", code, text, (f"MedicationRequest.{path}",))


def request_id(identifiers: list[Any] | None) -> tuple[str | None, str | None]:
    """(request id, index key). The request id is ``system|value``, or the bare value when the
    identifier has no system (then it is the same id as a scenario step's `request_id`)."""
    for identifier in identifiers or []:
        if identifier.value:
            key = token(identifier.system, identifier.value)
            return (key if identifier.system else str(identifier.value)), key
    return None, None


def days_supply(duration: Any, problems: list[Issue]) -> int:
    path = "dispenseRequest.expectedSupplyDuration"
    if duration is None or duration.value is None:
        problems.append(_problem(path, "the days supply is required"))
        return 0
    unit = duration.code if duration.code else duration.unit
    if duration.system not in (None, UCUM) or unit not in DAYS_PER_UNIT:
        problems.append(
            _problem(path, "the supply duration must be in days (d) or weeks (wk)", "value")
        )
        return 0
    days = Decimal(str(duration.value)) * DAYS_PER_UNIT[unit]
    if days != days.to_integral_value() or days <= 0:
        problems.append(
            _problem(path, "the supply must be a positive whole number of days", "value")
        )
        return 0
    return int(days)


def setting_and_discharge(
    categories: list[Any] | None, problems: list[Issue]
) -> tuple[Setting, bool]:
    codes = {
        coding.code
        for concept in categories or []
        for coding in concept.coding or []
        if coding.system == CATEGORY_SYSTEM
    }
    settings = {SETTINGS[c] for c in codes if c in SETTINGS}
    if len(settings) > 1:
        problems.append(_problem("category", "inpatient and outpatient at once", "value"))
    setting = settings.pop() if len(settings) == 1 else Setting.OUTPATIENT
    return setting, "discharge" in codes


def medication_concept(request: Any) -> Any:
    """What the order names: its CodeableConcept, or the code of the contained Medication its
    medicationReference points to."""
    concept = request.medicationCodeableConcept
    reference = request.medicationReference
    if concept is None and reference is not None and (reference.reference or "").startswith("#"):
        for held in request.contained or []:
            if held.id == reference.reference[1:] and held.get_resource_type() == "Medication":
                concept = held.code
    return concept


def rxnorm_code(request: Any) -> str:
    for coding in getattr(medication_concept(request), "coding", None) or []:
        if coding.system == RXNORM and coding.code:
            return str(coding.code)
    return DEFAULT_RXNORM


def order_as_dispense(
    ordered: Any,
    now: datetime,
    drug: str,
    problems: list[Issue],
    pharmacy: str | None = None,
) -> tuple[DispenseRequest, tuple[str, ...]]:
    """A MedicationRequest as the dispense it would be now, for a read-only check (no
    override), and the participants it does not name ("prescriber", "pharmacy"); ``pharmacy``
    when given wins over the order's performer."""
    prescriber = npi_of(ordered.requester, ordered.contained)
    dispense = ordered.dispenseRequest
    pharmacy = pharmacy or npi_of(getattr(dispense, "performer", None), ordered.contained)
    setting, discharge = setting_and_discharge(ordered.category, problems)
    duration = getattr(dispense, "expectedSupplyDuration", None)
    days = days_supply(duration, problems) if duration is not None else 0
    missing = tuple(
        name for name, npi in (("prescriber", prescriber), ("pharmacy", pharmacy)) if not npi
    )
    request = DispenseRequest(
        pharmacy_npi=pharmacy or "",
        prescriber_npi=prescriber or "",
        setting=setting,
        dispense_date=now,
        days_supply=days,
        drug=drug,
        discharge=discharge,
        request_id=request_id(ordered.identifier)[0],
    )
    return request, missing


def _sub(extension: Any, url: str) -> Any:
    return next((e for e in extension.extension or [] if e.url == url), None)


def pharmacist_override(request: Any, problems: list[Issue]) -> Override | None:
    """§6.2, extension `urn:rems-gateway:fhir:pharmacist-override` with `prescriber`
    (valueIdentifier, NPI), `anc` (valueQuantity, UCUM), `anc-drawn` (valueDateTime) and
    `rationale` (valueString). A missing part reaches the rules, which answer
    OVERRIDE_INCOMPLETE; a malformed one is refused here."""
    found = next((e for e in request.extension or [] if e.url == OVERRIDE_EXTENSION), None)
    if found is None:
        return None
    prescriber = _sub(found, "prescriber")
    identifier = prescriber.valueIdentifier if prescriber is not None else None
    npi = identifier.value if identifier is not None and identifier.system == NPI_SYSTEM else None
    rationale = _sub(found, "rationale")
    return Override(
        prescriber_npi=npi,
        anc=_override_anc(found, problems),
        rationale=rationale.valueString if rationale is not None else None,
    )


def _override_anc(found: Any, problems: list[Issue]) -> ReportedAnc | None:
    anc, drawn = _sub(found, "anc"), _sub(found, "anc-drawn")
    if anc is None or anc.valueQuantity is None:
        return None
    moment = drawn.valueDateTime if drawn is not None else None
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        problems.append(
            _problem("extension", "the override's ANC needs anc-drawn with a UTC offset", "value")
        )
        return None
    value, unit = quantity_text(anc.valueQuantity)
    return ReportedAnc(value, unit, moment.astimezone(UTC))


def read_medication_request(request: Any, now: datetime) -> MedicationRequestReading:
    """``request`` is a validated R4B MedicationRequest; ``now`` the clinical now."""
    problems: list[Issue] = []
    subject = subject_ref(request.subject)
    if subject is None:
        problems.append(
            _problem("subject", "subject must be a Patient: by identifier or Patient/{id}")
        )
    prescriber = npi_of(request.requester, request.contained)
    if prescriber is None:
        problems.append(_problem("requester", "requester must be a Practitioner with an NPI"))
    dispense = request.dispenseRequest
    pharmacy = npi_of(getattr(dispense, "performer", None), request.contained)
    if pharmacy is None:
        path = "dispenseRequest.performer"
        problems.append(_problem(path, "the pharmacy must be an Organization with an NPI"))
    days = days_supply(getattr(dispense, "expectedSupplyDuration", None), problems)
    setting, discharge = setting_and_discharge(request.category, problems)
    override = pharmacist_override(request, problems)
    rid, key = request_id(request.identifier)
    reading = MedicationRequestReading(subject, key, None, problems)
    if not problems:
        reading.request = DispenseRequest(
            pharmacy_npi=pharmacy or "",
            prescriber_npi=prescriber or "",
            setting=setting,
            dispense_date=now,
            days_supply=days,
            drug=rxnorm_code(request),
            discharge=discharge,
            request_id=rid,
            override=override,
        )
    return reading


# --- the decision, out and back ---------------------------------------------------------------


def _coding(item: Finding) -> dict[str, Any]:
    return {"system": REMS_CODES, "code": item.code, "display": item.text}


def decision_extension(decision: Decision) -> dict[str, Any]:
    """The decision as one extension with sub-extensions (stored on the MedicationRequest)."""
    parts: list[dict[str, Any]] = [{"url": "outcome", "valueCode": decision.outcome.value}]
    if decision.rda is not None:
        rda = {"system": RDA_SYSTEM, "value": decision.rda.number}
        parts.append({"url": "rda", "valueIdentifier": rda})
        parts.append(
            {"url": "rda-valid-until", "valueDateTime": decision.rda.valid_until.isoformat()}
        )
    parts += [{"url": "reason", "valueCoding": _coding(r)} for r in decision.reasons]
    parts += [{"url": "warning", "valueCoding": _coding(w)} for w in decision.warnings]
    parts.append({"url": "rule-pack", "valueString": decision.rule_pack})
    parts.append({"url": "rule-pack-version", "valueString": decision.rule_pack_version})
    if decision.max_days_supply is not None:
        parts.append({"url": "max-days-supply", "valueInteger": decision.max_days_supply})
    parts.append({"url": "override-possible", "valueBoolean": decision.override_possible})
    if decision.decision_id:
        parts.append({"url": "decision-id", "valueString": decision.decision_id})
    return {"url": DECISION_EXTENSION, "extension": parts}


def with_decision(body: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """The resource as stored: its own extensions, ours replaced by the decision."""
    kept = [e for e in body.get("extension", []) if e.get("url") != DECISION_EXTENSION]
    return body | {"extension": [*kept, decision_extension(decision)]}


def decision_issues(decision: Decision) -> list[Issue]:
    """The decision as OperationOutcome issues: first an information issue carrying the whole
    decision as the extension (machine-readable), then one issue per reason and warning."""
    number = decision.rda.number if decision.rda else None
    text = f"{decision.outcome.value}" + (f": RDA {number}" if number else "")
    if decision.max_days_supply is not None and decision.outcome != Outcome.AUTHORIZED:
        text += f" (at most {decision.max_days_supply} days supply)"
    summary = Issue(
        "information", "informational", text, extensions=(decision_extension(decision),)
    )
    reason_severity = "information" if decision.outcome == Outcome.AUTHORIZED else "error"
    reasons = [
        Issue(reason_severity, "business-rule", r.text, rems_code=r.code) for r in decision.reasons
    ]
    warnings = [
        Issue("warning", "business-rule", w.text, rems_code=w.code) for w in decision.warnings
    ]
    return [summary, *reasons, *warnings]
