"""Wholesalers and distributors (docs/rules.md §10), and the certification lookup: the registry's
parties found by id, identifier, name, type and certification status.

Lookups read the tables every time (never the registry reads a writer batch remembers), so a
decertification loaded a moment ago is what the next lookup sees.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date
from typing import Any

from sqlalchemy import Connection, Select, and_, delete, exists, false, func, or_, select, true

from rems_core.model import Identifier, Pharmacy, Prescriber
from rems_core.parties import (
    NPI_SYSTEM,
    TRADE_KINDS,
    DesigneeRole,
    Party,
    PartyKind,
    TradePartner,
    role_key,
)
from rems_core.registry import RegistryConflict, TradePartnerEntry
from rems_core.store import tables as t
from rems_core.store.registry_repo import (
    Change,
    _named,
    attachment_t,
    enrollment_t,
    pharmacy_t,
    prescriber_t,
)

partner_t = t.TradePartnerRow.__table__
partner_id_t = t.TradePartnerIdentifierRow.__table__

HANDLE_SYSTEM = "urn:rems-gateway:{kind}"  # a trade partner's registry id as an identifier
ORGANIZATION = "Organization"
PRACTITIONER = "Practitioner"
PRACTITIONER_ROLE = "PractitionerRole"
ANY = "*"  # Organizations and Practitioners


@dataclass(frozen=True)
class PartyQuery:
    """A read (``resource_id``) or a search; every criterion given must hold."""

    resource_type: str  # Organization | Practitioner | PractitionerRole | * (the first two)
    resource_id: str | None = None
    identifier: tuple[str | None, str] | None = None  # (system or None: any, value)
    name: str | None = None  # starts with, any case
    kinds: tuple[PartyKind, ...] | None = None  # Organization `type`
    certified: bool | None = None  # `certification-status` on ``day``
    practitioner: str | None = None  # PractitionerRole: the prescriber's NPI
    key: str | None = None  # the CLI: an NPI, a registry id or an identifier value
    day: date | None = None
    count: int = 50
    offset: int = 0


def _dated(certified: Any, certified_on: Any, recertify_by: Any, day: date) -> Any:
    """§10 certified on ``day`` as SQL: certified, certified_on ≤ day ≤ recertify_by."""
    clauses = [certified == true(), or_(certified_on.is_(None), certified_on <= day)]
    if recertify_by is not None:
        clauses.append(or_(recertify_by.is_(None), recertify_by >= day))
    return and_(*clauses)


def _starts_with(column: Any, prefix: str) -> Any:
    escaped = prefix.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return func.lower(column).like(escaped + "%", escape="\\")


def _status(condition: Any, certified: bool | None) -> Any:
    if certified is None:
        return true()
    return condition if certified else ~condition


class PartiesRepo:
    """Mixed into the Store after RegistryRepo, whose ``_upsert`` and uncached reads it uses."""

    conn: Connection
    registry_changed: bool
    _upsert: Any
    _read_pharmacies: Any
    _read_prescribers: Any

    # --- loading ---------------------------------------------------------------------------

    def upsert_trade_partner(
        self, kind: PartyKind, entry: TradePartnerEntry
    ) -> list[tuple[str, Change]]:
        """The entry's identifiers are the partner's identifiers: others are dropped; one held
        by another partner is a conflict (nothing of the document is loaded)."""
        subject = f"{kind.value}-{entry.id}"
        keys = {"kind": kind.value, "handle": entry.id}
        fields = {
            "name": entry.name,
            "enrolled_on": entry.enrolled_on,
            "certified": entry.certified,
            "certified_on": entry.certified_on,
            "recertify_by": entry.recertify_by,
        }
        changes = _named(subject, self._upsert(partner_t, keys, fields))
        listed = {(i.system, i.value) for i in entry.identifiers}
        i = partner_id_t.c
        mine = and_(i.kind == kind.value, i.handle == entry.id)
        named = [and_(i.system == system, i.value == value) for system, value in listed]
        rows = self.conn.execute(select(partner_id_t).where(or_(mine, *named))).all()
        held = {(r.system, r.value): r for r in rows}
        for system, value in sorted(listed):
            owner = held.get((system, value))
            if owner is not None and (owner.kind, owner.handle) != (kind.value, entry.id):
                raise RegistryConflict(
                    f"{subject} names an identifier of {system} that "
                    f"{owner.kind}-{owner.handle} holds"
                )
            added = self._upsert(partner_id_t, {"system": system, "value": value}, keys)
            changes += _named(subject, added and Change("identifier added", [system]))
        for (system, value), row in held.items():
            if (row.kind, row.handle) == (kind.value, entry.id) and (system, value) not in listed:
                self.conn.execute(
                    delete(partner_id_t).where(
                        partner_id_t.c.system == system, partner_id_t.c.value == value
                    )
                )
                changes.append((subject, Change("identifier removed", [system])))
        return changes

    # --- reading ---------------------------------------------------------------------------

    def trade_partners(self, wanted: list[tuple[str, str]]) -> list[TradePartner]:
        """Partners by (kind, handle), in that order; unknown ones are left out."""
        if not wanted:
            return []
        pairs = [and_(partner_t.c.kind == k, partner_t.c.handle == h) for k, h in wanted]
        rows = {
            (r.kind, r.handle): r for r in self.conn.execute(select(partner_t).where(or_(*pairs)))
        }
        idents: dict[tuple[str, str], list[Identifier]] = {}
        owned = or_(
            *(and_(partner_id_t.c.kind == k, partner_id_t.c.handle == h) for k, h in wanted)
        )
        for r in self.conn.execute(
            select(partner_id_t).where(owned).order_by(partner_id_t.c.system, partner_id_t.c.value)
        ):
            idents.setdefault((r.kind, r.handle), []).append(Identifier(r.system, r.value))
        return [
            TradePartner(
                PartyKind(r.kind),
                r.handle,
                r.name,
                tuple(idents.get(key, ())),
                r.enrolled_on,
                r.certified,
                r.certified_on,
                r.recertify_by,
            )
            for key in wanted
            if (r := rows.get(key)) is not None
        ]

    def trade_partner_named(
        self, identifier: Identifier | None, handle: str
    ) -> TradePartner | None:
        """A partner by identifier (without a system: its value in any system), else by
        ``wholesaler-<id>``/``distributor-<id>`` or its id (a wholesaler first)."""
        if identifier is not None:
            i = partner_id_t.c
            system = i.system == identifier.system if identifier.system else true()
            row = self.conn.execute(
                select(i.kind, i.handle).where(system, i.value == identifier.value).order_by(i.kind)
            ).first()
            return self._one_partner(row.kind, row.handle) if row is not None else None
        for kind in TRADE_KINDS:
            if handle.startswith(f"{kind.value}-"):
                found = self._one_partner(kind.value, handle.removeprefix(f"{kind.value}-"))
                if found is not None:
                    return found
        for kind in TRADE_KINDS:
            if (found := self._one_partner(kind.value, handle)) is not None:
                return found
        return None

    def _one_partner(self, kind: str, handle: str) -> TradePartner | None:
        found = self.trade_partners([(kind, handle)])
        return found[0] if found else None

    def find_parties(self, query: PartyQuery) -> tuple[list[Party], int]:
        """One page of what matches, and how many match in all: pharmacies (by NPI), then
        wholesalers and distributors (by id); prescribers; designee roles."""
        total, found = 0, []
        skip, room = query.offset, query.count
        for kind, statement in self._keys(query):
            if statement is None:
                continue
            counted = select(func.count()).select_from(statement.order_by(None).subquery())
            matching = self.conn.execute(counted).scalar_one()
            total += matching
            if room > 0 and skip < matching:
                rows = self.conn.execute(statement.offset(skip).limit(room)).all()
                keys = [tuple(r) if len(r) > 1 else r[0] for r in rows]
                found += self._load(kind, keys)
                room -= len(keys)
            skip = max(0, skip - matching)
        return found, total

    def _keys(self, query: PartyQuery) -> list[tuple[str, Select[Any] | None]]:
        if query.resource_type == ANY:  # the CLI's `lookup KEY`
            organizations = self._keys(replace(query, resource_type=ORGANIZATION))
            return [*organizations, *self._keys(replace(query, resource_type=PRACTITIONER))]
        if query.resource_type == ORGANIZATION:
            kinds = query.kinds or (PartyKind.PHARMACY, *TRADE_KINDS)
            found = []
            if PartyKind.PHARMACY in kinds:
                found.append((PartyKind.PHARMACY.value, self._pharmacy_keys(query)))
            for kind in TRADE_KINDS:
                if kind in kinds:
                    found.append((kind.value, self._partner_keys(kind, query)))
            return found
        if query.resource_type == PRACTITIONER:
            return [(PartyKind.PRESCRIBER.value, self._prescriber_keys(query))]
        return [("designee", self._role_keys(query))]

    def _pharmacy_keys(self, query: PartyQuery) -> Select[Any] | None:
        where = []
        if query.resource_id is not None:
            if not query.resource_id.startswith("pharmacy-"):
                return None
            where.append(pharmacy_t.c.npi == query.resource_id.removeprefix("pharmacy-"))
        if query.identifier is not None:
            system, value = query.identifier
            if system not in (None, NPI_SYSTEM):
                return None
            where.append(pharmacy_t.c.npi == value)
        if query.key is not None:
            where.append(pharmacy_t.c.npi == query.key.removeprefix("pharmacy-"))
        if query.name is not None:
            where.append(_starts_with(pharmacy_t.c.name, query.name))
        if query.certified is not None and query.day is not None:
            e = enrollment_t.c
            certified = exists().where(
                e.pharmacy_npi == pharmacy_t.c.npi,
                _dated(e.certified, e.certified_on, e.recertify_by, query.day),
            )
            where.append(_status(certified, query.certified))
        return select(pharmacy_t.c.npi).where(*where).order_by(pharmacy_t.c.npi)

    def _partner_keys(self, kind: PartyKind, query: PartyQuery) -> Select[Any] | None:
        p = partner_t.c
        where = [p.kind == kind.value]
        if query.resource_id is not None:
            if not query.resource_id.startswith(f"{kind.value}-"):
                return None
            where.append(p.handle == query.resource_id.removeprefix(f"{kind.value}-"))
        if query.identifier is not None:
            system, value = query.identifier
            if system == HANDLE_SYSTEM.format(kind=kind.value):
                where.append(p.handle == value)
            else:
                where.append(self._has_identifier(kind, system, value))
        if query.key is not None:
            by_value = self._has_identifier(kind, None, query.key)
            handle = query.key.removeprefix(f"{kind.value}-")
            where.append(or_(p.handle == handle, by_value))
        if query.name is not None:
            where.append(_starts_with(p.name, query.name))
        if query.certified is not None and query.day is not None:
            dated = _dated(p.certified, p.certified_on, p.recertify_by, query.day)
            where.append(_status(dated, query.certified))
        return select(p.handle).where(*where).order_by(p.handle)

    @staticmethod
    def _has_identifier(kind: PartyKind, system: str | None, value: str) -> Any:
        i = partner_id_t.c
        return exists().where(
            i.kind == kind.value,
            i.handle == partner_t.c.handle,
            i.value == value,
            i.system == system if system is not None else true(),
        )

    def _prescriber_keys(self, query: PartyQuery) -> Select[Any] | None:
        p = prescriber_t.c
        where = []
        npi = query.resource_id if query.resource_id is not None else query.key
        if npi is not None:
            where.append(p.npi == npi)
        if query.identifier is not None:
            system, value = query.identifier
            where.append(p.npi == value if system in (None, NPI_SYSTEM) else false())
        if query.name is not None:
            where.append(_starts_with(p.name, query.name))
        if query.certified is not None and query.day is not None:
            where.append(
                _status(_dated(p.certified, p.certified_on, None, query.day), query.certified)
            )
        return select(p.npi).where(*where).order_by(p.npi)

    def _role_keys(self, query: PartyQuery) -> Select[Any] | None:
        a = attachment_t.c
        where = []
        if query.resource_id is not None:
            key = role_key(query.resource_id)
            if key is None:
                return None
            where += [a.designee_id == key[0], a.prescriber_npi == key[1]]
        if query.practitioner is not None:
            where.append(a.prescriber_npi == query.practitioner)
        if query.identifier is not None:
            where.append(a.designee_id == query.identifier[1])
        return (
            select(a.designee_id, a.prescriber_npi)
            .where(*where)
            .order_by(a.prescriber_npi, a.designee_id)
        )

    def _load(self, kind: str, keys: list[Any]) -> list[Party]:
        if not keys:
            return []
        if kind == PartyKind.PHARMACY.value:
            pharmacies: dict[str, Pharmacy] = self._read_pharmacies(set(keys))
            return [pharmacies[k] for k in keys if k in pharmacies]
        if kind in (PartyKind.WHOLESALER.value, PartyKind.DISTRIBUTOR.value):
            return list(self.trade_partners([(kind, k) for k in keys]))
        if kind == PartyKind.PRESCRIBER.value:
            prescribers: dict[str, Prescriber] = self._read_prescribers(set(keys))
            return [prescribers[k] for k in keys if k in prescribers]
        npis = {npi for _, npi in keys}
        by_npi: dict[str, Prescriber] = self._read_prescribers(npis)
        roles: list[Party] = []
        for designee_id, npi in keys:
            prescriber = by_npi[npi]
            name = next((d.name for d in prescriber.designees if d.id == designee_id), "")
            roles.append(DesigneeRole(designee_id, name, prescriber))
        return roles

    def pharmacies_uncached(self, npis: list[str]) -> dict[str, Pharmacy]:
        """Pharmacies as the tables hold them now (a lookup never uses a batch's memory)."""
        found: dict[str, Pharmacy] = self._read_pharmacies(set(npis))
        return found
