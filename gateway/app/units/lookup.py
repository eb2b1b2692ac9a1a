"""The certification lookup and the shipment check (docs/rules.md §10), each one small unit of
work: it reads the registry as committed and appends the audit record of who asked what
(``lookup``: the query's hash and the resources found by id; ``ship_check``: the outcome, the
pack and the codes). Reads elsewhere never write; these do, because every lookup is audited."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from gateway.app import audit_records
from gateway.app.context import UnitContext
from gateway.app.values import Source
from rems_core.model import Identifier
from rems_core.parties import Party, resource_ref
from rems_core.rulepack import RulePack
from rems_core.shipping import ShipCheck, ShipmentQuery, may_ship
from rems_core.store.parties_repo import PartyQuery
from rems_core.store.repo import Store


def find(
    ctx: UnitContext, store: Store, query: PartyQuery, source: Source
) -> tuple[list[Party], int]:
    found, total = store.find_parties(query)
    now = ctx.now()
    asked = asdict(query) | {"day": query.day.isoformat() if query.day else None}
    refs = [resource_ref(p) for p in found]
    store.append_audit(audit_records.lookup(now, source, now, asked, refs))
    return found, total


def ship_check(
    ctx: UnitContext, store: Store, query: ShipmentQuery, pack: RulePack, source: Source
) -> tuple[ShipCheck, list[str]]:
    """The check and the resources of the partner and pharmacy it found."""
    partner = store.trade_partner_named(query.partner_identifier, query.partner_ref)
    pharmacy = store.pharmacies_uncached([query.pharmacy_npi]).get(query.pharmacy_npi)
    checked = may_ship(pack, partner, pharmacy, query.day, query.partner_named, query.pharmacy_npi)
    now = ctx.now()
    refs = [resource_ref(p) for p in (partner, pharmacy) if p is not None]
    store.append_audit(
        audit_records.lookup(
            now, source, now, _asked(query), refs, "ship_check", checked.outcome.value, checked
        )
    )
    return checked, refs


def _asked(query: ShipmentQuery) -> dict[str, Any]:
    ident: Identifier | None = query.partner_identifier
    return {
        "partner": [ident.system, ident.value] if ident else query.partner_ref,
        "pharmacy": query.pharmacy_npi,
        "day": query.day.isoformat(),
    }
