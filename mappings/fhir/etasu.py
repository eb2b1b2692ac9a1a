"""`GuidanceResponse/$rems-etasu` (HL7 US Medication REMS IG style): Parameters in, and out a
GuidanceResponse whose `outputParameters` hold one GuidanceResponse per requirement.

In: `patient` (a Patient resource with identifiers, a reference or an identifier),
`medicationRequest` (resource) or `medication` (resource), optional `pharmacy` (Organization or
HealthcareService with an NPI, or an NPI identifier), and a case number as `case_number`,
`caseNumber` or `authNumber` (the IG's sources disagree; all three are accepted): an RDA number
or a decision id, whose decision is reported, with its RDA's state now (issued, dispensed,
voided or expired) as the extension `urn:rems-gateway:fhir:rda-state` and the output parameter
`rda_state`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mappings.fhir.medication_request import (
    DEFAULT_RXNORM,
    RXNORM,
    decision_extension,
    order_as_dispense,
    rxnorm_code,
)
from mappings.fhir.outcome import Issue
from mappings.fhir.references import NPI_SYSTEM, SubjectRef, npi_of, subject_ref
from rems_core.codes import Code
from rems_core.model import Decision, DispenseRequest, Finding, Identifier, Outcome, Setting
from rems_core.rda import RdaState

CASE_NUMBER_NAMES = ("case_number", "caseNumber", "authNumber")
RDA_STATE_EXTENSION = "urn:rems-gateway:fhir:rda-state"
MODULE = "urn:rems-gateway:fhir:rems-etasu:clozapine"
STATUS = {
    Outcome.AUTHORIZED: "success",
    Outcome.NOT_APPLICABLE: "success",  # no REMS requirement applies to this drug
    Outcome.RATIONALE_REQUIRED: "data-required",
    Outcome.DENIED: "failure",
}
# requirement → (title, the reason codes that fail it, the participant it needs)
REQUIREMENTS: dict[str, tuple[str, frozenset[str], str | None]] = {
    "patient-enrolled": (
        "Patient enrolled, treatment not interrupted or discontinued",
        frozenset(
            {Code.PATIENT_NOT_ENROLLED, Code.TREATMENT_INTERRUPTED, Code.TREATMENT_DISCONTINUED}
        ),
        None,
    ),
    "prescriber-certified": (
        "Prescriber certified",
        frozenset({Code.PRESCRIBER_NOT_CERTIFIED}),
        "prescriber",
    ),
    "pharmacy-certified": (
        "Pharmacy certified for the setting",
        frozenset({Code.PHARMACY_NOT_CERTIFIED}),
        "pharmacy",
    ),
    "psf-within-window": (
        "Patient Status Form within the window (or a pharmacist override)",
        frozenset({Code.PSF_OUT_OF_WINDOW, Code.OVERRIDE_LIMIT_REACHED, Code.OVERRIDE_INCOMPLETE}),
        None,
    ),
    "anc-acceptable": (
        "ANC acceptable and labs current (or covered by a rationale)",
        frozenset({Code.ANC_BELOW_THRESHOLD, Code.LABS_MISSED}),
        None,
    ),
    "supply-within-limit": (
        "Days supply within the discharge limit",
        frozenset({Code.DISCHARGE_SUPPLY_EXCEEDS_LIMIT}),
        "supply",  # missing only where a limit applies (with_supply)
    ),
}


@dataclass
class EtasuQuery:
    case_number: str | None = None
    subject: SubjectRef | None = None
    request: DispenseRequest | None = None  # None: only a case number was given
    missing: tuple[str, ...] = ()  # participants not given: "prescriber", "pharmacy"
    problems: list[Issue] = field(default_factory=list)
    at: datetime | None = None  # the clinical now (a case number's RDA is reported as of it)


@dataclass(frozen=True)
class EtasuCheck:
    """A stored decision (found by case number or request id), or the decision a dispense would
    get now, with every failing requirement (f is evaluated even when a–e fail)."""

    decision: Decision | None  # None: the case number names no decision
    stored: bool
    denials: tuple[Finding, ...] = ()
    rationale: tuple[Finding, ...] = ()
    rda_state: RdaState | None = None  # a stored decision's RDA, as of the query's time
    discharge_cap: int | None = None  # a discharge from an inpatient-only pharmacy: its day cap
    supply_given: bool = True  # False: the check named no days supply (nothing to hold to a cap)


def _named(parameters: Any, name: str) -> Any:
    return next((p for p in parameters.parameter or [] if p.name == name), None)


def _case_number(parameters: Any) -> str | None:
    for name in CASE_NUMBER_NAMES:
        found = _named(parameters, name)
        if found is not None:
            value = found.valueString or getattr(found.valueIdentifier, "value", None)
            if value:
                return str(value)
    return None


def _subject(parameters: Any) -> SubjectRef | None:
    found = _named(parameters, "patient")
    if found is None:
        return None
    if found.resource is not None:
        held = [
            Identifier(i.system, i.value)
            for i in found.resource.identifier or []
            if i.system and i.value
        ]
        return SubjectRef(identifiers=tuple(held)) if held else None
    if found.valueIdentifier is not None and found.valueIdentifier.value:
        identifier = found.valueIdentifier
        return SubjectRef(identifiers=(Identifier(identifier.system or "", identifier.value),))
    return subject_ref(found.valueReference)


def _pharmacy(parameters: Any) -> str | None:
    found = _named(parameters, "pharmacy")
    if found is None:
        return None
    if found.valueIdentifier is not None and found.valueIdentifier.system == NPI_SYSTEM:
        return str(found.valueIdentifier.value)
    if found.valueReference is not None:
        return npi_of(found.valueReference)
    for identifier in getattr(found.resource, "identifier", None) or []:
        if identifier.system == NPI_SYSTEM and identifier.value:
            return str(identifier.value)
    return None


def _medication_code(resource: Any) -> str | None:
    for coding in getattr(resource.code, "coding", None) or []:
        if coding.system == RXNORM and coding.code:
            return str(coding.code)
    return None


def read_etasu_parameters(parameters: Any, now: datetime) -> EtasuQuery:
    """``parameters`` is a validated R4B Parameters; ``now`` the clinical now."""
    query = EtasuQuery(case_number=_case_number(parameters), subject=_subject(parameters), at=now)
    if query.case_number is not None:
        return query
    ordered = _named(parameters, "medicationRequest")
    ordered = ordered.resource if ordered is not None else None
    if query.subject is None and ordered is not None:
        query.subject = subject_ref(ordered.subject)
    if query.subject is None:
        query.problems.append(
            Issue(
                "error",
                "required",
                "give a patient (identifier or Patient/{id}) or a case number",
                ("Parameters.parameter",),
            )
        )
        return query
    query.request, query.missing = _request(parameters, ordered, now, query.problems)
    return query


def _request(
    parameters: Any, ordered: Any, now: datetime, problems: list[Issue]
) -> tuple[DispenseRequest, tuple[str, ...]]:
    medication = _named(parameters, "medication")
    drug = _medication_code(medication.resource) if medication and medication.resource else None
    pharmacy = _pharmacy(parameters)
    if ordered is not None:
        return order_as_dispense(ordered, now, drug or rxnorm_code(ordered), problems, pharmacy)
    request = DispenseRequest(
        pharmacy_npi=pharmacy or "",
        prescriber_npi="",
        setting=Setting.OUTPATIENT,
        dispense_date=now,
        days_supply=0,
        drug=drug or DEFAULT_RXNORM,
    )
    return request, ("prescriber",) if pharmacy else ("prescriber", "pharmacy")


# --- out -----------------------------------------------------------------------------------------


def with_supply(check: EtasuCheck, missing: tuple[str, ...]) -> tuple[str, ...]:
    """``missing`` and, for a check that named no days supply where a discharge limit applies,
    "supply" (the limit cannot be held to; elsewhere no supply is limited)."""
    if check.supply_given or check.discharge_cap is None:
        return missing
    return (*missing, "supply")


def requirement_status(
    key: str, check: EtasuCheck, missing: tuple[str, ...], applicable: bool = True
) -> tuple[str, str]:
    """(status, note) of one requirement: success, data-required or failure."""
    title, codes, participant = REQUIREMENTS[key]
    failed = [f for f in check.denials if f.code in codes]
    needed = [f for f in check.rationale if f.code in codes]
    if not applicable:
        return "success", f"{title}: not required for this drug."
    if participant == "supply" and not check.supply_given:
        if check.discharge_cap is None:
            return "success", f"{title}: no days supply was given; no limit applies here."
        cap = check.discharge_cap
        return "data-required", f"{title}: no days supply was given (at most {cap} days here)."
    if participant in missing:
        return "data-required", f"{title}: no {participant} was given."
    if failed or needed:
        return "failure" if failed else "data-required", " ".join(
            f.text for f in (*failed, *needed)
        )
    return "success", f"{title}: met."


def etasu_status(
    check: EtasuCheck, missing: tuple[str, ...], unasked: frozenset[str] = frozenset()
) -> str:
    """The GuidanceResponse status `$rems-etasu` answers for this check (CDS Hooks cards take
    their indicator from it); ``unasked``: requirements left out (a prescriber's order hook
    does not judge a pharmacy it does not know)."""
    assert check.decision is not None
    missing = with_supply(check, missing)
    applicable = check.decision.outcome != Outcome.NOT_APPLICABLE
    statuses = [
        requirement_status(key, check, missing, applicable)[0]
        for key in REQUIREMENTS
        if key not in unasked
    ]
    if unasked:
        return next((s for s in ("failure", "data-required") if s in statuses), "success")
    return overall_status(statuses, check, missing)


def _requirement(
    key: str, check: EtasuCheck, missing: tuple[str, ...], applicable: bool
) -> tuple[str, dict[str, Any]]:
    status, note = requirement_status(key, check, missing, applicable)
    resource = {
        "resourceType": "GuidanceResponse",
        "id": key,
        "moduleUri": f"{MODULE}:{key}",
        "status": status,
        "note": [{"text": note}],
    }
    return status, resource


def overall_status(statuses: list[str], check: EtasuCheck, missing: tuple[str, ...]) -> str:
    assert check.decision is not None
    if not missing:
        return STATUS[check.decision.outcome]
    if "failure" in statuses:
        return "failure"
    return "data-required"


def etasu_parameters(
    check: EtasuCheck, missing: tuple[str, ...], patient_id: str | None
) -> dict[str, Any]:
    """Parameters with `rems-etasu` = the GuidanceResponse; its decision also as our decision
    extension (machine-readable), the case number (RDA when authorized, else the decision id of a
    stored decision) in the contained output Parameters."""
    response: dict[str, Any] = {"resourceType": "GuidanceResponse", "moduleUri": MODULE}
    if check.decision is None:
        response |= {"status": "failure", "note": [{"text": "No decision has this case number."}]}
        return _wrapped(response)
    decision = check.decision
    missing = with_supply(check, missing)
    applicable = decision.outcome != Outcome.NOT_APPLICABLE
    requirements = [_requirement(key, check, missing, applicable) for key in REQUIREMENTS]
    statuses = [status for status, _ in requirements]
    output: list[dict[str, Any]] = [
        {"name": "requirement", "resource": resource} for _, resource in requirements
    ]
    case_number = decision.rda.number if decision.rda else None
    if case_number is None and check.stored:
        case_number = decision.decision_id or None
    if case_number:
        output.append({"name": "case_number", "valueString": case_number})
    if check.rda_state is not None:
        output.append({"name": "rda_state", "valueCode": check.rda_state.value})
    extensions = [decision_extension(decision)]
    if check.rda_state is not None:
        extensions.append({"url": RDA_STATE_EXTENSION, "valueCode": check.rda_state.value})
    response |= {
        "status": overall_status(statuses, check, missing),
        "extension": extensions,
        "contained": [{"resourceType": "Parameters", "id": "etasu", "parameter": output}],
        "outputParameters": {"reference": "#etasu"},
        "note": [
            {"text": _summary(decision, check)},
            *_warnings(decision.warnings),
        ],
    }
    if patient_id:
        response["subject"] = {"reference": f"Patient/{patient_id}"}
    return _wrapped(response)


def _summary(decision: Any, check: EtasuCheck) -> str:
    kind = "Recorded decision" if check.stored else "Check (nothing recorded, no RDA issued)"
    state = f" RDA {decision.rda.number} is {check.rda_state.value}." if check.rda_state else ""
    supply = ""
    if not check.supply_given:
        limit = decision.max_days_supply
        supply = " No days supply was given" + (
            f": at most {limit} days at this discharge." if limit is not None else "."
        )
    return f"{kind}: {decision.outcome.value}.{state}{supply}"


def _warnings(warnings: tuple[Finding, ...]) -> list[dict[str, str]]:
    return [{"text": f"{w.code}: {w.text}"} for w in warnings]


def _wrapped(response: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": "rems-etasu", "resource": response}],
    }


def decision_response(decision: Decision, decided_at: datetime) -> dict[str, Any]:
    """A recorded decision as the GuidanceResponse `GuidanceResponse/{decision id}` (the focus
    of a decision notification): its status as `$rems-etasu` reports it, the decision as our
    extension."""
    response: dict[str, Any] = {
        "resourceType": "GuidanceResponse",
        "id": decision.decision_id,
        "extension": [decision_extension(decision)],
        "moduleUri": MODULE,
        "status": STATUS[decision.outcome],
        "occurrenceDateTime": decided_at.isoformat(),
        "note": [
            {"text": f"Recorded decision: {decision.outcome.value}."},
            *_warnings(decision.warnings),
        ],
    }
    if decision.patient:
        response["subject"] = {"reference": f"Patient/{decision.patient}"}
    return response
