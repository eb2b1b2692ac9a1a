"""The certification lookup's resources (docs/contracts.md §5, docs/rules.md §10): pharmacies,
wholesalers and distributors as Organizations, prescribers as Practitioners, designees as
PractitionerRoles, each certification as the extension `urn:rems-gateway:fhir:rems-certification`;
and `Organization/$rems-ship-check`'s Parameters in and out."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from mappings.fhir.outcome import REMS_CODES, Issue
from rems_core.model import Finding, Identifier, Pharmacy, Prescriber
from rems_core.parties import (
    NPI_SYSTEM,
    DesigneeRole,
    Party,
    TradePartner,
    certified_on_day,
    enrollment_certified_at,
)
from rems_core.shipping import ShipCheck, ShipmentQuery

CERTIFICATION = "urn:rems-gateway:fhir:rems-certification"
DESIGNEE_NAME = "urn:rems-gateway:fhir:designee-name"
ORGANIZATION_TYPE = "urn:rems-gateway:organization-type"
ROLE_SYSTEM = "urn:rems-gateway:practitioner-role"
DESIGNEE_SYSTEM = "urn:rems-gateway:designee"
DEA_SYSTEM = "http://hl7.org/fhir/sid/us-dea"
NCPDP_SYSTEM = "http://terminology.hl7.org/NamingSystem/NCPDPProviderIdentificationNumber"
TYPES = ("pharmacy", "wholesaler", "distributor")


def certification(
    day: date,
    certified: bool,
    certified_on: date | None,
    recertify_by: date | None,
    setting: str | None = None,
    enrolled_on: date | None = None,
) -> dict[str, Any]:
    """One enrollment's certification: `certified` is whether it holds on `as-of` (the day of
    the lookup: the registry's flag within its dates); the dates as the registry holds them."""
    parts: list[dict[str, Any]] = []
    if setting is not None:
        parts.append({"url": "setting", "valueCode": setting})
    held = certified_on_day(certified, certified_on, recertify_by, day)
    parts.append({"url": "certified", "valueBoolean": held})
    for url, value in (
        ("enrolled-on", enrolled_on),
        ("certified-on", certified_on),
        ("recertify-by", recertify_by),
    ):
        if value is not None:
            parts.append({"url": url, "valueDate": value.isoformat()})
    parts.append({"url": "as-of", "valueDate": day.isoformat()})
    return {"url": CERTIFICATION, "extension": parts}


def _organization(
    resource_id: str,
    kind: str,
    name: str,
    identifiers: list[Identifier],
    certifications: list[dict[str, Any]],
    active: bool,
) -> dict[str, Any]:
    coding = {"system": ORGANIZATION_TYPE, "code": kind, "display": kind.title()}
    return {
        "resourceType": "Organization",
        "id": resource_id,
        "extension": certifications,
        "identifier": _identifiers(identifiers),
        "active": active,
        "type": [{"coding": [coding]}],
        "name": name,
    }


def _identifiers(identifiers: list[Identifier]) -> list[dict[str, str]]:
    return [{"system": i.system, "value": i.value} for i in identifiers]


def pharmacy_resource(pharmacy: Pharmacy, day: date) -> dict[str, Any]:
    identifiers = [Identifier(NPI_SYSTEM, pharmacy.npi)]
    if pharmacy.ncpdp:
        identifiers.append(Identifier(NCPDP_SYSTEM, pharmacy.ncpdp))
    certifications = [
        certification(day, e.certified, e.certified_on, e.recertify_by, setting=e.setting.value)
        for e in pharmacy.enrollments
    ]
    active = any(enrollment_certified_at(e, day) for e in pharmacy.enrollments)
    resource_id = f"pharmacy-{pharmacy.npi}"
    return _organization(
        resource_id, "pharmacy", pharmacy.name, identifiers, certifications, active
    )


def partner_resource(partner: TradePartner, day: date) -> dict[str, Any]:
    handle = Identifier(f"urn:rems-gateway:{partner.kind.value}", partner.handle)
    cert = certification(
        day,
        partner.certified,
        partner.certified_on,
        partner.recertify_by,
        None,
        partner.enrolled_on,
    )
    identifiers = [handle, *partner.identifiers]
    active = partner.certified_at(day)
    kind = partner.kind.value
    return _organization(partner.resource_id, kind, partner.name, identifiers, [cert], active)


def practitioner_resource(prescriber: Prescriber, day: date) -> dict[str, Any]:
    identifiers = [Identifier(NPI_SYSTEM, prescriber.npi)]
    if prescriber.dea:
        identifiers.append(Identifier(DEA_SYSTEM, prescriber.dea))
    return {
        "resourceType": "Practitioner",
        "id": prescriber.npi,
        "extension": [
            certification(day, prescriber.certified, prescriber.certified_on, None, "prescriber")
        ],
        "identifier": _identifiers(identifiers),
        "active": certified_on_day(prescriber.certified, prescriber.certified_on, None, day),
        "name": [{"text": prescriber.name}],
    }


def role_resource(role: DesigneeRole) -> dict[str, Any]:
    return {
        "resourceType": "PractitionerRole",
        "id": role.resource_id,
        "extension": [{"url": DESIGNEE_NAME, "valueString": role.name}],
        "identifier": [{"system": DESIGNEE_SYSTEM, "value": role.designee_id}],
        "active": True,
        "practitioner": {
            "reference": f"Practitioner/{role.prescriber.npi}",
            "display": role.prescriber.name,
        },
        "code": [
            {
                "coding": [
                    {"system": ROLE_SYSTEM, "code": "designee", "display": "Prescriber designee"}
                ]
            }
        ],
    }


def party_resource(party: Party, day: date) -> dict[str, Any]:
    if isinstance(party, Pharmacy):
        return pharmacy_resource(party, day)
    if isinstance(party, TradePartner):
        return partner_resource(party, day)
    if isinstance(party, DesigneeRole):
        return role_resource(party)
    return practitioner_resource(party, day)


# --- Organization/$rems-ship-check ---------------------------------------------------------------


@dataclass
class ShipCheckAsked:
    query: ShipmentQuery | None
    problems: list[Issue] = field(default_factory=list)


def read_ship_check(data: dict[str, Any], today: date) -> ShipCheckAsked:
    """Parameters `wholesaler` (valueIdentifier, valueReference by reference or identifier, or
    valueString: its registry id), `pharmacy` (the NPI as valueIdentifier, valueReference or
    valueString), optional `date` (valueDate; default today)."""
    given = {p.get("name"): p for p in data.get("parameter", []) if isinstance(p, dict)}
    problems: list[Issue] = []
    partner = _party_param(given.get("wholesaler"), "wholesaler", "Organization/", problems)
    pharmacy = _party_param(given.get("pharmacy"), "pharmacy", "Organization/pharmacy-", problems)
    day = today
    if "date" in given:
        try:
            day = date.fromisoformat(str(given["date"].get("valueDate", "")))
        except ValueError:
            problems.append(_problem("date is a valueDate (YYYY-MM-DD)", "date"))
    if problems or partner is None or pharmacy is None:
        return ShipCheckAsked(None, problems)
    if isinstance(pharmacy, Identifier):
        if pharmacy.system not in ("", NPI_SYSTEM):
            problems.append(_problem(f"pharmacy is named by its NPI ({NPI_SYSTEM})", "pharmacy"))
            return ShipCheckAsked(None, problems)
        pharmacy = pharmacy.value
    if isinstance(partner, Identifier):
        return ShipCheckAsked(ShipmentQuery(partner, "", pharmacy, day))
    return ShipCheckAsked(ShipmentQuery(None, partner, pharmacy, day))


def _party_param(
    parameter: dict[str, Any] | None, name: str, prefix: str, problems: list[Issue]
) -> Identifier | str | None:
    if parameter is None:
        problems.append(_problem(f"{name} is required", name))
        return None
    if isinstance(ident := parameter.get("valueIdentifier"), dict) and ident.get("value"):
        return Identifier(str(ident.get("system") or ""), str(ident["value"]))
    reference = parameter.get("valueReference")
    if isinstance(reference, dict):
        if isinstance(ident := reference.get("identifier"), dict) and ident.get("value"):
            return Identifier(str(ident.get("system") or ""), str(ident["value"]))
        if str(reference.get("reference", "")).startswith(prefix):
            return str(reference["reference"]).removeprefix(prefix)
    if isinstance(text := parameter.get("valueString"), str) and text:
        return text
    problems.append(
        _problem(
            f"{name} is a valueIdentifier, a valueReference ({prefix}…) or a valueString", name
        )
    )
    return None


def _problem(text: str, name: str) -> Issue:
    return Issue("error", "required", text, (f"Parameters.parameter.where(name='{name}')",))


def _coding(name: str, found: Finding) -> dict[str, Any]:
    return {
        "name": name,
        "valueCoding": {"system": REMS_CODES, "code": found.code, "display": found.text},
    }


def ship_check_parameters(
    checked: ShipCheck, query: ShipmentQuery, found: list[str]
) -> dict[str, Any]:
    """`allowed`, `outcome`, each `reason` and `warning` as a Coding of our codes (its display the
    sentence), `rule_pack`, `rule_pack_version`, `date`, and the parties found (`party`)."""
    parameters: list[dict[str, Any]] = [
        {"name": "allowed", "valueBoolean": checked.allowed},
        {"name": "outcome", "valueCode": checked.outcome.value},
        *(_coding("reason", r) for r in checked.reasons),
        *(_coding("warning", w) for w in checked.warnings),
        {"name": "rule_pack", "valueString": checked.rule_pack},
        {"name": "rule_pack_version", "valueString": checked.rule_pack_version},
        {"name": "date", "valueDate": query.day.isoformat()},
        *({"name": "party", "valueReference": {"reference": ref}} for ref in found),
    ]
    return {"resourceType": "Parameters", "parameter": parameters}
