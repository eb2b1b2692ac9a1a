"""§10 the registry's parties as a lookup sees them: pharmacies, wholesalers, distributors and
prescribers, each with its certifications and what they mean on a given day."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import StrEnum

from rems_core.model import Identifier, Pharmacy, PharmacyEnrollment, Prescriber

NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"


class PartyKind(StrEnum):
    PHARMACY = "pharmacy"
    WHOLESALER = "wholesaler"
    DISTRIBUTOR = "distributor"
    PRESCRIBER = "prescriber"


TRADE_KINDS = (PartyKind.WHOLESALER, PartyKind.DISTRIBUTOR)


def certified_on_day(
    certified: bool, certified_on: date | None, recertify_by: date | None, day: date
) -> bool:
    """Certified on ``day``: certified, not before its certification date, and not past the day
    it had to recertify by (both dates are inclusive; a date not given does not limit)."""
    if not certified:
        return False
    if certified_on is not None and day < certified_on:
        return False
    return recertify_by is None or day <= recertify_by


def why_not_certified(
    certified: bool, certified_on: date | None, recertify_by: date | None, day: date
) -> str:
    """The sentence's end for a certification that does not hold on ``day``."""
    if not certified:
        return "not certified in the registry"
    if certified_on is not None and day < certified_on:
        return f"certified only from {certified_on.isoformat()}"
    return f"recertification was due by {recertify_by.isoformat() if recertify_by else '?'}"


@dataclass(frozen=True)
class TradePartner:
    """A wholesaler or distributor of the registry (``handle``: the registry file's id)."""

    kind: PartyKind
    handle: str
    name: str = ""
    identifiers: tuple[Identifier, ...] = ()
    enrolled_on: date | None = None
    certified: bool = False
    certified_on: date | None = None
    recertify_by: date | None = None

    @property
    def resource_id(self) -> str:
        return f"{self.kind.value}-{self.handle}"

    def certified_at(self, day: date) -> bool:
        return certified_on_day(self.certified, self.certified_on, self.recertify_by, day)


def enrollment_certified_at(enrollment: PharmacyEnrollment, day: date) -> bool:
    return certified_on_day(
        enrollment.certified, enrollment.certified_on, enrollment.recertify_by, day
    )


def pharmacy_certified_at(pharmacy: Pharmacy, day: date) -> bool:
    """Certified in at least one setting on ``day``."""
    return any(enrollment_certified_at(e, day) for e in pharmacy.enrollments)


def prescriber_certified_at(prescriber: Prescriber, day: date) -> bool:
    return certified_on_day(prescriber.certified, prescriber.certified_on, None, day)


def party_certified_at(party: Pharmacy | TradePartner | Prescriber, day: date) -> bool:
    if isinstance(party, Pharmacy):
        return pharmacy_certified_at(party, day)
    if isinstance(party, TradePartner):
        return party.certified_at(day)
    return prescriber_certified_at(party, day)


@dataclass(frozen=True)
class DesigneeRole:
    """A designee acting for one prescriber (a FHIR PractitionerRole)."""

    designee_id: str
    name: str
    prescriber: Prescriber

    @property
    def resource_id(self) -> str:
        return f"designee-{self.designee_id}-{self.prescriber.npi}"


def role_key(resource_id: str) -> tuple[str, str] | None:
    """``designee-<id>-<NPI>`` → (designee id, NPI)."""
    body = resource_id.removeprefix("designee-")
    designee, _, npi = body.rpartition("-")
    if body == resource_id or not designee or len(npi) != 10 or not npi.isdigit():
        return None
    return designee, npi


Party = Pharmacy | TradePartner | Prescriber | DesigneeRole


def resource_ref(party: Party) -> str:
    """The FHIR resource a party is: ``Organization/pharmacy-<NPI>``, ``Practitioner/<NPI>``…"""
    if isinstance(party, Pharmacy):
        return f"Organization/pharmacy-{party.npi}"
    if isinstance(party, TradePartner):
        return f"Organization/{party.resource_id}"
    if isinstance(party, DesigneeRole):
        return f"PractitionerRole/{party.resource_id}"
    return f"Practitioner/{party.npi}"


# --- as a person reads it (`rems-gateway lookup`) ---------------------------------------------


def _dates(enrolled_on: date | None, certified_on: date | None, recertify_by: date | None) -> str:
    named = (
        ("enrolled", enrolled_on),
        ("certified", certified_on),
        ("recertify by", recertify_by),
    )
    shown = [f"{label} {day.isoformat()}" for label, day in named if day is not None]
    return f" ({', '.join(shown)})" if shown else ""


def _held(certified: bool, certified_on: date | None, recertify_by: date | None, day: date) -> str:
    if certified_on_day(certified, certified_on, recertify_by, day):
        return f"certified on {day.isoformat()}"
    why = why_not_certified(certified, certified_on, recertify_by, day)
    return f"NOT certified on {day.isoformat()}: {why}"


def party_lines(party: Party, day: date) -> list[str]:
    """The party's kind, name and certification per setting with its dates, judged on ``day``."""
    head = f"{resource_ref(party)}"
    if isinstance(party, Pharmacy):
        lines = [f"pharmacy {party.npi}  {party.name}  [{head}]"]
        lines += [
            f"  {e.setting.value}: "
            f"{_held(e.certified, e.certified_on, e.recertify_by, day)}"
            f"{_dates(None, e.certified_on, e.recertify_by)}"
            for e in party.enrollments
        ] or ["  no enrollment"]
        return lines
    if isinstance(party, TradePartner):
        lines = [f"{party.kind.value} {party.handle}  {party.name}  [{head}]"]
        lines += [f"  identifier {i.system}|{i.value}" for i in party.identifiers]
        held = _held(party.certified, party.certified_on, party.recertify_by, day)
        dates = _dates(party.enrolled_on, party.certified_on, party.recertify_by)
        return [*lines, f"  {held}{dates}"]
    if isinstance(party, DesigneeRole):
        return [f"designee {party.designee_id}  {party.name}  of prescriber {party.prescriber.npi}"]
    held = _held(party.certified, party.certified_on, None, day)
    lines = [f"prescriber {party.npi}  {party.name}  [{head}]"]
    lines.append(f"  {held}{_dates(None, party.certified_on, None)}")
    return lines + [f"  designee {d.id}  {d.name}" for d in party.designees]
