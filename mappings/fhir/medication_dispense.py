"""MedicationDispense ⇄ a dispense record and what became of it (docs/contracts.md §5, docs/rules.md
§6.4); a MedicationRequest's end (`cancelled`/`stopped`).

In: `authorizingPrescription` — a literal reference to the gateway's MedicationRequest (its RDA,
else its request id), or a logical one by identifier: system `urn:rems-gateway:rda` names the
RDA number, any other identifier the order's request id (as a MedicationRequest's `identifier`
is); the drug (RxNorm coding of `medicationCodeableConcept` or a contained Medication; none: the
clozapine default, as for MedicationRequests), `quantity`, `daysSupply` (`d` or `wk`),
`whenHandedOver` (else `whenPrepared`, else the clinical now), `performer.actor` (an Organization
by NPI). Out: the outcome as the extension `urn:rems-gateway:fhir:dispense-outcome`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from mappings.fhir.medication_request import (
    DECISION_EXTENSION,
    RDA_SYSTEM,
    days_supply,
    rxnorm_code,
)
from mappings.fhir.outcome import REMS_CODES, Issue
from mappings.fhir.references import npi_of, token
from rems_core.model import Finding
from rems_core.rda import DispenseFiled, DispenseOutcome, DispenseRecord, OrderAction

OUTCOME_EXTENSION = "urn:rems-gateway:fhir:dispense-outcome"
ENDS = {"cancelled": OrderAction.CANCEL, "stopped": OrderAction.DISCONTINUE}


@dataclass
class MedicationDispenseReading:
    record: DispenseRecord | None  # None: it cannot be read
    prescription: str | None  # the id of the gateway's MedicationRequest it names
    identifier: str | None  # "system|value": its business identifier
    problems: list[Issue] = field(default_factory=list)


def _prescription(references: list[Any] | None) -> tuple[str | None, str | None, str | None]:
    """(MedicationRequest id, RDA number, request id) the authorizing prescription names."""
    for reference in references or []:
        literal = reference.reference or ""
        if literal.startswith("MedicationRequest/"):
            return literal.removeprefix("MedicationRequest/"), None, None
        identifier = reference.identifier
        if identifier is not None and identifier.value:
            if identifier.system == RDA_SYSTEM:
                return None, str(identifier.value), None
            key = token(identifier.system, identifier.value)
            return None, None, key if identifier.system else str(identifier.value)
    return None, None, None


def _dispensed_at(dispense: Any, now: datetime, problems: list[Issue]) -> datetime:
    moment = dispense.whenHandedOver or dispense.whenPrepared
    if moment is None:
        return now
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        problems.append(
            Issue(
                "error",
                "value",
                "the dispense time needs a time with a UTC offset",
                ("MedicationDispense.whenHandedOver",),
            )
        )
        return now
    return moment.astimezone(UTC)


def read_medication_dispense(dispense: Any, now: datetime) -> MedicationDispenseReading:
    """``dispense`` is a validated R4B MedicationDispense."""
    problems: list[Issue] = []
    prescription, rda, request = _prescription(dispense.authorizingPrescription)
    days = None
    if dispense.daysSupply is not None:
        found: list[Issue] = []
        days = days_supply(dispense.daysSupply, found) or None
        where = ("MedicationDispense.daysSupply",)
        problems += [replace(p, expression=where) for p in found]
    quantity = dispense.quantity.value if dispense.quantity is not None else None
    performer = next((p.actor for p in dispense.performer or []), None)
    drug = rxnorm_code(dispense)
    record = DispenseRecord(
        rda=rda,
        request_id=request,
        drug=drug,
        quantity=Decimal(str(quantity)) if quantity is not None else None,
        days_supply=days,
        dispensed_at=_dispensed_at(dispense, now, problems),
        pharmacy_npi=npi_of(performer, dispense.contained) if performer is not None else None,
    )
    identifiers = [i for i in dispense.identifier or [] if i.value]
    key = token(identifiers[0].system, identifiers[0].value) if identifiers else None
    return MedicationDispenseReading(None if problems else record, prescription, key, problems)


def prescription_of(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """(RDA number, request id) of a stored MedicationRequest: the RDA of its decision, and its
    first identifier as its request id."""
    decision = next(
        (e for e in body.get("extension", []) if e.get("url") == DECISION_EXTENSION), {}
    )
    rda = next(
        (p["valueIdentifier"]["value"] for p in decision.get("extension", []) if p["url"] == "rda"),
        None,
    )
    for identifier in body.get("identifier", []):
        if identifier.get("value"):
            system = identifier.get("system")
            return rda, token(system, identifier["value"]) if system else identifier["value"]
    return rda, None


def decision_id_of(body: dict[str, Any]) -> str | None:
    """The decision id a stored MedicationRequest carries."""
    decision = next(
        (e for e in body.get("extension", []) if e.get("url") == DECISION_EXTENSION), {}
    )
    return next(
        (p["valueString"] for p in decision.get("extension", []) if p["url"] == "decision-id"),
        None,
    )


def with_original_decision(body: dict[str, Any], original: dict[str, Any]) -> dict[str, Any]:
    """The next version of a MedicationRequest: as sent, with the original's decision (an
    update is no new dispense check)."""
    kept = [e for e in body.get("extension", []) if e.get("url") != DECISION_EXTENSION]
    decided = [e for e in original.get("extension", []) if e.get("url") == DECISION_EXTENSION]
    return body | {"extension": [*kept, *decided]}


# --- what became of it --------------------------------------------------------------------------


def _coding(item: Finding) -> dict[str, Any]:
    return {"system": REMS_CODES, "code": item.code, "display": item.text}


def outcome_extension(filed: DispenseFiled) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"url": "outcome", "valueCode": filed.outcome.value}]
    if filed.rda is not None:
        parts.append({"url": "rda", "valueIdentifier": {"system": RDA_SYSTEM, "value": filed.rda}})
    if filed.rda_state is not None:
        parts.append({"url": "rda-state", "valueCode": filed.rda_state.value})
    parts += [{"url": "reason", "valueCoding": _coding(r)} for r in filed.reasons]
    parts += [{"url": "warning", "valueCoding": _coding(w)} for w in filed.warnings]
    if filed.record_id is not None:
        parts.append({"url": "dispense-record", "valueString": filed.record_id})
    return {"url": OUTCOME_EXTENSION, "extension": parts}


def with_outcome(body: dict[str, Any], filed: DispenseFiled) -> dict[str, Any]:
    kept = [e for e in body.get("extension", []) if e.get("url") != OUTCOME_EXTENSION]
    return body | {"extension": [*kept, outcome_extension(filed)]}


def dispense_issues(filed: DispenseFiled) -> list[Issue]:
    """First an information issue carrying the outcome as the extension, then one error per
    refusal and one warning per warning."""
    text = filed.outcome.value
    if filed.rda is not None:
        text += f": RDA {filed.rda} {filed.rda_state.value if filed.rda_state else ''}".rstrip()
    if filed.outcome == DispenseOutcome.IGNORED:
        text += " (not clozapine: the REMS does not apply)"
    summary = Issue("information", "informational", text, extensions=(outcome_extension(filed),))
    reasons = [Issue("error", "business-rule", r.text, rems_code=r.code) for r in filed.reasons]
    warnings = [Issue("warning", "business-rule", w.text, rems_code=w.code) for w in filed.warnings]
    return [summary, *reasons, *warnings]
