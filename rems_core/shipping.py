"""§10 may a wholesaler (or distributor) ship clozapine to a pharmacy on a given day?

The guide: "Pharmaceutical companies and wholesalers are not able to fill clozapine order requests
without evidence that pharmacies are enrolled … This requirement has been temporarily paused".
The pack's ``wholesaler_check`` says whether the check is enforced, paused (the answer is "may
ship", with what would have failed as a warning) or not applicable (the REMS ended).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import StrEnum

from rems_core.codes import Code, finding
from rems_core.model import Finding, Identifier, Pharmacy
from rems_core.parties import TradePartner, pharmacy_certified_at, why_not_certified
from rems_core.rulepack import RulePack


class ShipOutcome(StrEnum):
    ALLOWED = "allowed"
    REFUSED = "refused"
    PAUSED = "paused"  # allowed: the requirement is paused, something would have failed
    NOT_APPLICABLE = "not_applicable"  # allowed: the REMS ended


@dataclass(frozen=True)
class ShipCheck:
    outcome: ShipOutcome
    reasons: tuple[Finding, ...]
    warnings: tuple[Finding, ...]
    rule_pack: str
    rule_pack_version: str

    @property
    def allowed(self) -> bool:
        return self.outcome != ShipOutcome.REFUSED


def party_label(partner: TradePartner | None, named: str) -> str:
    """ "Wholesaler W1 (Acme Drug)"; a partner the registry does not know by what was asked."""
    if partner is None:
        return f"Wholesaler {named}"
    title = f"{partner.kind.value.capitalize()} {partner.handle}"
    return f"{title} ({partner.name})" if partner.name else title


def may_ship(
    pack: RulePack,
    partner: TradePartner | None,
    pharmacy: Pharmacy | None,
    day: date,
    partner_named: str = "",
    pharmacy_named: str = "",
) -> ShipCheck:
    """The partner certified on ``day`` and the pharmacy certified in at least one setting on
    ``day``; an unknown partner or pharmacy is not certified."""
    common = {"rule_pack": pack.id, "rule_pack_version": pack.version}
    mode, section = pack.wholesaler_check.value, pack.wholesaler_check.section
    if mode == "not_applicable":
        note = finding(Code.SHIPMENT_CHECK_NOT_APPLICABLE, section=section)
        return ShipCheck(ShipOutcome.NOT_APPLICABLE, (), (note,), **common)
    failed = _failures(partner, pharmacy, day, partner_named, pharmacy_named)
    warnings = _recertification_notice(pack, partner, day, partner_named)
    if not failed:
        return ShipCheck(ShipOutcome.ALLOWED, (), warnings, **common)
    if mode == "paused":
        codes = " and ".join(f.code for f in failed)
        paused = finding(Code.SHIPMENT_CHECK_PAUSED, section=section, failed=codes)
        return ShipCheck(ShipOutcome.PAUSED, (), (paused, *failed, *warnings), **common)
    return ShipCheck(ShipOutcome.REFUSED, failed, warnings, **common)


def _failures(
    partner: TradePartner | None,
    pharmacy: Pharmacy | None,
    day: date,
    partner_named: str,
    pharmacy_named: str,
) -> tuple[Finding, ...]:
    failed = []
    if partner is None or not partner.certified_at(day):
        why = (
            "not in the registry"
            if partner is None
            else why_not_certified(
                partner.certified, partner.certified_on, partner.recertify_by, day
            )
        )
        failed.append(
            finding(
                Code.WHOLESALER_NOT_CERTIFIED,
                party=party_label(partner, partner_named),
                day=day.isoformat(),
                why=why,
            )
        )
    if pharmacy is None or not pharmacy_certified_at(pharmacy, day):
        npi = pharmacy.npi if pharmacy is not None else pharmacy_named
        failed.append(
            finding(
                Code.PHARMACY_NOT_CERTIFIED,
                pharmacy=npi,
                setting="inpatient or outpatient",
            )
        )
    return tuple(failed)


def _recertification_notice(
    pack: RulePack, partner: TradePartner | None, day: date, named: str
) -> tuple[Finding, ...]:
    """A certified partner whose recertification falls due within the pack's notice."""
    if partner is None or partner.recertify_by is None or not partner.certified_at(day):
        return ()
    days = (partner.recertify_by - day).days
    if days > pack.recertification_notice.value:
        return ()
    notice = finding(
        Code.WHOLESALER_RECERTIFICATION_DUE,
        party=party_label(partner, named),
        by=partner.recertify_by.isoformat(),
        days=days,
        day=day.isoformat(),
    )
    return (notice,)


@dataclass(frozen=True)
class ShipmentQuery:
    """Who ships (an identifier of the partner, or its registry id or resource id), to which
    pharmacy (NPI), on which day."""

    partner_identifier: Identifier | None
    partner_ref: str
    pharmacy_npi: str
    day: date

    @property
    def partner_named(self) -> str:
        if self.partner_identifier is not None:
            return f"{self.partner_identifier.system}|{self.partner_identifier.value}"
        return self.partner_ref
