"""A registry patient as a FHIR Patient, and its REMS status as the Parameters of
`Patient/{id}/$rems-status`."""

from __future__ import annotations

from typing import Any

from mappings.fhir.outcome import UCUM
from rems_core.model import Identifier
from rems_core.status import PatientRecord, RemsStatus

GENDER = {"f": "female", "female": "female", "m": "male", "male": "male", "o": "other"}
GENDER["other"] = "other"


def patient_resource(record: PatientRecord) -> dict[str, Any]:
    """id = the REMS patient id; identifiers, name, birthDate and gender as the registry has
    them (a registry sex we cannot map is `unknown`)."""
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": record.rems_id,
        "identifier": [{"system": i.system, "value": i.value} for i in record.identifiers],
    }
    name: dict[str, Any] = {}
    if record.family:
        name["family"] = record.family
    if record.given:
        name["given"] = record.given.split()
    if name:
        resource["name"] = [name]
    if record.sex:
        resource["gender"] = GENDER.get(record.sex.strip().lower(), "unknown")
    if record.birth_date is not None:
        resource["birthDate"] = record.birth_date.isoformat()
    return resource


def _part(name: str, kind: str, value: Any) -> dict[str, Any]:
    return {"name": name, f"value{kind}": value}


def rems_status_parameters(status: RemsStatus) -> dict[str, Any]:
    """Dates are calendar dates in the site's time zone; `at` is the moment judged."""
    parameters: list[dict[str, Any]] = [
        _part("patient", "Reference", {"reference": f"Patient/{status.patient_id}"}),
        _part("at", "DateTime", status.at.isoformat()),
        _part("rule-pack", "String", status.rule_pack),
        _part("rule-pack-version", "String", str(status.rule_pack_version)),
        _part("enrolled", "Boolean", status.enrolled),
    ]
    if status.enrolled_on is not None:
        parameters.append(_part("enrollment-date", "Date", status.enrolled_on.isoformat()))
    parameters.append(_part("treatment-status", "Code", status.treatment_status.value))
    if status.newest_anc is not None and status.newest_anc.anc is not None:
        parameters.append(_anc(status))
    parameters += [
        _part("monitoring-frequency-reported", "Code", status.reported_frequency.value),
        _part("monitoring-frequency-recommended", "Code", status.recommended_frequency.value),
    ]
    if status.next_anc_due is not None:
        parameters.append(_part("next-anc-due", "Date", status.next_anc_due.isoformat()))
    if status.psf_window_end is not None:
        parameters.append(_part("psf-window-end", "Date", status.psf_window_end.isoformat()))
    parameters.append(
        {
            "name": "overrides",
            "part": [
                _part("used", "Integer", status.overrides_used),
                _part("limit", "Integer", status.override_limit),
                _part("window-days", "Integer", status.override_window_days),
            ],
        }
    )
    for psf in status.pending_signatures:
        parameters.append(
            {
                "name": "pending-signature",
                "part": [
                    _part("psf-id", "String", psf.psf_id),
                    _part("type", "Code", psf.form.type.value),
                    _part("submitted", "DateTime", psf.form.submitted_at.isoformat()),
                    _part("prescriber", "String", psf.form.prescriber_npi),
                ],
            }
        )
    return {"resourceType": "Parameters", "parameter": parameters}


def _anc(status: RemsStatus) -> dict[str, Any]:
    anc = status.newest_anc
    assert anc is not None
    quantity = {"value": anc.anc, "unit": "/µL", "system": UCUM, "code": "/uL"}
    parts = [
        _part("value", "Quantity", quantity),
        _part("drawn", "DateTime", anc.drawn.isoformat()),
    ]
    if anc.category is not None:
        parts.append(_part("category", "Code", anc.category.value))
    return {"name": "anc", "part": parts}


def client_patient_identifiers(patient: Any) -> list[Identifier]:
    """A client Patient's identifiers (a validated R4B Patient), each once: those it can be
    linked to a registry patient by, with a system and a value."""
    found: list[Identifier] = []
    for identifier in getattr(patient, "identifier", None) or []:
        if identifier.system and identifier.value:
            held = Identifier(str(identifier.system), str(identifier.value))
            if held not in found:
                found.append(held)
    return found
