"""Scenario steps as FHIR R4 resources (docs/contracts.md §2 and §5, `--via fhir`).

`lab` → Observation, `labs` → a transaction Bundle (DiagnosticReport + Observations),
`dispense` → MedicationRequest (mappings/fhir/medication_request.py reads it back), `psf` →
QuestionnaireResponse to the clozapine-psf / clozapine-enrollment Questionnaire
(mappings/fhir/questionnaire.py reads it back). Numbers stay exact decimals in the JSON sent.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from mappings.fhir.medication_request import (
    CATEGORY_SYSTEM,
    OVERRIDE_EXTENSION,
    RXNORM,
)
from mappings.fhir.questionnaire import DESIGNEE_SYSTEM, questionnaires
from mappings.fhir.references import NPI_SYSTEM
from rems_core.model import (
    DispenseRequest,
    Identifier,
    LabResult,
    Override,
    PatientStatusForm,
    PsfType,
    Rationale,
    ReportedAnc,
    ResultStatus,
    SubmitterRole,
)
from rems_core.rda import DispenseRecord

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
STATUS = {
    ResultStatus.FINAL: "final",
    ResultStatus.CORRECTED: "corrected",
    ResultStatus.PRELIMINARY: "preliminary",
    ResultStatus.CANCELLED: "cancelled",
}
LABORATORY = [
    {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "laboratory",
            }
        ]
    }
]
NUMBER = re.compile(r"^(<=|>=|<|>)?\s*(-?\d+(\.\d+)?)$")
PSF_QUESTIONNAIRE = "clozapine-psf"
ENROLLMENT_QUESTIONNAIRE = "clozapine-enrollment"
ANSWER_SYSTEMS = {  # the answer options' code systems (mappings/fhir/questionnaires.json)
    "type": "urn:rems-gateway:psf-type",
    "designation": "urn:rems-gateway:designation",
    "treatment-status": "urn:rems-gateway:treatment-status",
    "monitoring-frequency": "urn:rems-gateway:monitoring-frequency",
    "rationale.reason": "urn:rems-gateway:rationale-reason",
}


class Decimals:
    """Exact decimal values in the JSON sent (0.80 stays 0.80, never a binary float)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def number(self, text: str) -> str:
        marker = f"__decimal_{len(self.values)}__"
        self.values[marker] = str(Decimal(text))
        return marker

    def dumps(self, body: dict[str, Any]) -> bytes:
        text = json.dumps(body, ensure_ascii=False, default=str)
        for marker, value in self.values.items():
            text = text.replace(f'"{marker}"', value)
        return text.encode("utf-8")


def as_written(value: Any, numbers: Decimals) -> Any:
    """A fhir step's YAML as FHIR JSON: exact decimals stay numbers, YAML timestamps and dates
    become ISO 8601 text (the scenario loader reads 0.8 as a Decimal, 2022-03-10 as a date)."""
    if isinstance(value, dict):
        return {str(k): as_written(v, numbers) for k, v in value.items()}
    if isinstance(value, list):
        return [as_written(v, numbers) for v in value]
    if isinstance(value, Decimal):
        return numbers.number(str(value))
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def subject_reference(subject: Identifier) -> dict[str, Any]:
    return {"identifier": {"system": subject.system, "value": subject.value}}


def npi_reference(npi: str, kind: str) -> dict[str, Any]:
    return {"type": kind, "identifier": {"system": NPI_SYSTEM, "value": npi}}


# --- labs ----------------------------------------------------------------------------------------


def observation(result: LabResult, subject: Identifier, numbers: Decimals) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "status": STATUS[result.status],
        "category": LABORATORY,
        "code": {"coding": [{"system": LOINC, "code": result.code}]},
        "subject": subject_reference(subject),
        "effectiveDateTime": result.drawn.isoformat(),
    }
    if result.specimen:
        body["specimen"] = {"identifier": {"value": result.specimen}}
    body |= _value(result.value, result.unit, numbers)
    return body


def _value(value: str, unit: str, numbers: Decimals) -> dict[str, Any]:
    """valueQuantity for a number (with its comparator), valueString for anything else."""
    if value == "":
        return {}
    quantity = _quantity(value, unit, numbers)
    return {"valueQuantity": quantity} if quantity else {"valueString": value}


def _quantity(value: str, unit: str, numbers: Decimals) -> dict[str, Any] | None:
    found = NUMBER.match(value.strip())
    if found is None:
        return None
    quantity: dict[str, Any] = {"value": numbers.number(found.group(2))}
    if found.group(1):
        quantity["comparator"] = found.group(1)
    if unit:
        quantity |= {"unit": unit, "system": UCUM, "code": unit}
    return quantity


def report_bundle(results: list[LabResult], subject: Identifier, numbers: Decimals) -> dict:
    """A transaction: a DiagnosticReport (the step's specimen as its identifier) listing its
    Observations by `urn:uuid:` fullUrls."""
    urls = [uuid.uuid4().urn for _ in results]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "57021-8"}]},  # CBC with differential
        "subject": subject_reference(subject),
        "effectiveDateTime": results[0].drawn.isoformat(),
        "result": [{"reference": url} for url in urls],
    }
    if results[0].specimen:
        report["identifier"] = [{"value": results[0].specimen}]
    entries = [_entry(uuid.uuid4().urn, report)]
    entries += [
        _entry(url, observation(r, subject, numbers)) for url, r in zip(urls, results, strict=True)
    ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _entry(full_url: str, resource: dict[str, Any]) -> dict[str, Any]:
    method = {"method": "POST", "url": resource["resourceType"]}
    return {"fullUrl": full_url, "resource": resource, "request": method}


# --- dispense ------------------------------------------------------------------------------------


def medication_request(
    request: DispenseRequest, subject: Identifier, numbers: Decimals
) -> dict[str, Any]:
    """Every key of a dispense step: the dispense date is the request's clinical now (the
    `X-Clinical-Time` header), never part of the body, so a retry is the same resource."""
    categories = [_category(request.setting.value)]
    if request.discharge:
        categories.append(_category("discharge"))
    body: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "category": categories,
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": request.drug}]},
        "subject": subject_reference(subject),
        "dispenseRequest": {
            "expectedSupplyDuration": {
                "value": request.days_supply,
                "unit": "days",
                "system": UCUM,
                "code": "d",
            }
        },
    }
    if request.request_id:  # no system: the gateway's request id is then the bare value
        body["identifier"] = [{"value": request.request_id}]
    if request.prescriber_npi:
        body["requester"] = npi_reference(request.prescriber_npi, "Practitioner")
    if request.pharmacy_npi:
        body["dispenseRequest"]["performer"] = npi_reference(request.pharmacy_npi, "Organization")
    if request.override is not None:
        body["extension"] = [override_extension(request.override, numbers)]
    return body


def medication_dispense(record: DispenseRecord, subject: Identifier) -> dict[str, Any]:
    """A `dispensed` step: the dispense of the order its request id names (the bare value, as
    the dispense step's MedicationRequest carries it); handed over at the clinical now."""
    return {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": record.drug}]},
        "subject": subject_reference(subject),
        "authorizingPrescription": [{"identifier": {"value": record.request_id}}],
        "quantity": {"value": int(record.quantity or 0)},
        "daysSupply": {"value": record.days_supply, "unit": "days", "system": UCUM, "code": "d"},
        "whenHandedOver": record.dispensed_at.isoformat(),
    }


def _category(code: str) -> dict[str, Any]:
    return {"coding": [{"system": CATEGORY_SYSTEM, "code": code}]}


def override_extension(override: Override, numbers: Decimals) -> dict[str, Any]:
    """The pharmacist override (docs/rules.md §6.2); a part the step leaves out is left out."""
    parts: list[dict[str, Any]] = []
    if override.prescriber_npi:
        identifier = {"system": NPI_SYSTEM, "value": override.prescriber_npi}
        parts.append({"url": "prescriber", "valueIdentifier": identifier})
    if override.anc is not None:
        quantity = _quantity(override.anc.value, override.anc.unit, numbers)
        if quantity is not None:
            parts.append({"url": "anc", "valueQuantity": quantity})
        parts.append({"url": "anc-drawn", "valueDateTime": override.anc.drawn.isoformat()})
    if override.rationale:
        parts.append({"url": "rationale", "valueString": override.rationale})
    return {"url": OVERRIDE_EXTENSION, "extension": parts}


# --- psf -----------------------------------------------------------------------------------------


def questionnaire_response(
    form: PatientStatusForm, subject: Identifier, numbers: Decimals
) -> dict[str, Any]:
    """Every key of a psf step as answers to our Questionnaire; `signature` is answered true
    only for a form its prescriber signs (then sent with that prescriber's own token)."""
    qid = ENROLLMENT_QUESTIONNAIRE if form.type == PsfType.ENROLLMENT else PSF_QUESTIONNAIRE
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": questionnaires()[qid]["url"],
        "status": "completed",
        "subject": subject_reference(subject),
        "authored": form.submitted_at.isoformat(),
        "author": _author(form),
        "item": psf_items(form, numbers),
    }


def _author(form: PatientStatusForm) -> dict[str, Any]:
    if form.role == SubmitterRole.DESIGNEE:
        return {"identifier": {"system": DESIGNEE_SYSTEM, "value": form.submitter}}
    return npi_reference(form.submitter, "Practitioner")


def psf_items(form: PatientStatusForm, numbers: Decimals) -> list[dict[str, Any]]:
    items = [_choice("type", form.type.value)]
    if form.prescriber_npi and form.prescriber_npi != form.submitter:
        items.append(_answer("prescriber-npi", {"valueString": form.prescriber_npi}))
    if form.designation is not None:
        items.append(_choice("designation", form.designation.value))
    items.append(_choice("treatment-status", form.treatment_status.value))
    if form.status_effective is not None:
        items.append(_answer("status-effective", {"valueDate": form.status_effective.isoformat()}))
    if form.monitoring_frequency is not None:
        items.append(_choice("monitoring-frequency", form.monitoring_frequency.value))
    items += [_anc_group(anc, numbers) for anc in form.anc]
    if form.missed_draws:
        dates = [{"valueDate": d.isoformat()} for d in form.missed_draws]
        items.append({"linkId": "missed-draws", "answer": dates})
    if form.justification:
        items.append(_answer("justification", {"valueString": form.justification}))
    if form.rationale is not None:
        items.append(_rationale_group(form.rationale))
    if form.role == SubmitterRole.PRESCRIBER:
        items.append(_answer("signature", {"valueBoolean": form.signed_by is not None}))
    return items


def _answer(link_id: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"linkId": link_id, "answer": [value]}


def _choice(link_id: str, code: str) -> dict[str, Any]:
    return _answer(link_id, {"valueCoding": {"system": ANSWER_SYSTEMS[link_id], "code": code}})


def _anc_group(anc: ReportedAnc, numbers: Decimals) -> dict[str, Any]:
    quantity = _quantity(anc.value, anc.unit, numbers)
    if quantity is None:  # not a number: sent as written, the gateway says what is wrong
        quantity = {"value": _loose_number(anc.value), "code": anc.unit, "system": UCUM}
    return {
        "linkId": "anc",
        "item": [
            _answer("anc.value", {"valueQuantity": quantity}),
            _answer("anc.drawn", {"valueDateTime": anc.drawn.isoformat()}),
            _answer("anc.code", {"valueString": anc.code}),
        ],
    }


def _loose_number(text: str) -> Any:
    try:
        return float(Decimal(text))
    except InvalidOperation:
        return text


def _rationale_group(rationale: Rationale) -> dict[str, Any]:
    options = {
        o["valueCoding"]["code"]
        for item in questionnaires()[PSF_QUESTIONNAIRE]["item"]
        if item["linkId"] == "rationale"
        for sub in item["item"]
        if sub["linkId"] == "rationale.reason"
        for o in sub["answerOption"]
    }
    reason = (
        _choice("rationale.reason", rationale.reason)
        if rationale.reason in options
        else _answer("rationale.reason", {"valueString": rationale.reason})
    )
    items = [reason]
    if rationale.text:
        items.append(_answer("rationale.text", {"valueString": rationale.text}))
    return {"linkId": "rationale", "item": items}
