"""Wholesalers and distributors in the registry, and the shipment rule (docs/rules.md §10): loading
is idempotent and audited; may a wholesaler ship clozapine to a pharmacy on a day, by pack; the
`lookup` and `ship-check` commands as a user runs them."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from gateway.app.bootstrap import bootstrap
from gateway.app.service import RemsService
from gateway.app.values import Source
from rems_core.model import Pharmacy, PharmacyEnrollment, Setting
from rems_core.parties import PartyKind, TradePartner, certified_on_day
from rems_core.registry import RegistryConflict, registry_from
from rems_core.rulepack import PackLibrary
from rems_core.shipping import ShipOutcome, may_ship
from rems_core.store.db import make_engine, upgrade
from rems_core.store.repo import Store
from tests.conftest import committed, run
from tests.test_cli import cli
from tests.test_registry_lookup import CORNER, DEA, HOSPITAL, registry

PACKS = PackLibrary()
W1 = TradePartner(
    PartyKind.WHOLESALER,
    "W1",
    "Acme Wholesale",
    certified=True,
    certified_on=date(2021, 11, 16),
    recertify_by=date(2023, 11, 16),
)
CERTIFIED = Pharmacy(HOSPITAL, "", None, (PharmacyEnrollment(Setting.INPATIENT, True),))
UNCERTIFIED = Pharmacy(CORNER, "", None, (PharmacyEnrollment(Setting.OUTPATIENT, False),))


def registry_records(service: RemsService) -> list[Any]:
    records = committed(service, lambda store: list(store.audit_records()))
    return [r for r in records if r.kind == "registry"]


def test_loading_wholesalers_again_changes_nothing(service: RemsService) -> None:
    doc = registry_from(registry())
    run(service.load_registry(doc, Source("test")))
    first = registry_records(service)
    assert {"wholesaler-W1", "distributor-DX"} <= {r.subject for r in first}
    run(service.load_registry(doc, Source("test")))
    assert registry_records(service) == first
    changed = registry()
    changed["wholesalers"][0]["certified"] = False
    changed["wholesalers"][0]["identifiers"] = changed["wholesalers"][0]["identifiers"][:1]
    run(service.load_registry(registry_from(changed), Source("test")))
    later = [(r.subject, r.outcome, r.input_ref) for r in registry_records(service)[len(first) :]]
    assert later == [
        ("wholesaler-W1", "updated", "certified"),
        ("wholesaler-W1", "identifier removed", "urn:oid:1.3.160"),
    ]


def test_one_identifier_of_two_partners_loads_nothing(service: RemsService) -> None:
    doc = registry()
    doc["distributors"][0]["identifiers"] = [{"system": DEA, "value": "RA1234563"}]
    with pytest.raises(RegistryConflict):
        run(service.load_registry(registry_from(doc), Source("test")))
    run(service.load_registry(registry_from(registry()), Source("test")))
    alone = {"distributors": doc["distributors"]}
    with pytest.raises(RegistryConflict, match="holds"):
        run(service.load_registry(registry_from(alone), Source("test")))
    partner = committed(service, lambda store: store.trade_partner_named(None, "DX"))
    assert partner is not None and partner.identifiers == ()


def test_certified_on_and_recertify_by_are_inclusive() -> None:
    on, by = date(2021, 11, 16), date(2023, 11, 16)
    assert certified_on_day(True, on, by, on) and certified_on_day(True, on, by, by)
    assert not certified_on_day(True, on, by, date(2021, 11, 15))
    assert not certified_on_day(True, on, by, date(2023, 11, 17))
    assert not certified_on_day(False, None, None, on)


def test_a_certified_wholesaler_may_ship_to_a_pharmacy_certified_in_one_setting() -> None:
    checked = may_ship(PACKS.get("clozapine-rems-2021"), W1, CERTIFIED, date(2022, 3, 1))
    assert checked.outcome == ShipOutcome.ALLOWED and checked.allowed
    assert (checked.reasons, checked.warnings) == ((), ())


def test_enforced_refuses_an_uncertified_pharmacy_or_a_lapsed_wholesaler() -> None:
    pack = PACKS.get("clozapine-rems-2021")
    lapsed = may_ship(pack, W1, UNCERTIFIED, date(2023, 11, 17))
    assert lapsed.outcome == ShipOutcome.REFUSED and not lapsed.allowed
    assert [r.code for r in lapsed.reasons] == [
        "WHOLESALER_NOT_CERTIFIED",
        "PHARMACY_NOT_CERTIFIED",
    ]
    assert "recertification was due by 2023-11-16" in lapsed.reasons[0].text
    unknown = may_ship(pack, None, None, date(2022, 3, 1), "W9", "1245319599")
    assert [r.code for r in unknown.reasons] == [
        "WHOLESALER_NOT_CERTIFIED",
        "PHARMACY_NOT_CERTIFIED",
    ]
    assert "W9" in unknown.reasons[0].text and "1245319599" in unknown.reasons[1].text


def test_a_recertification_due_within_the_notice_is_a_warning() -> None:
    checked = may_ship(PACKS.get("clozapine-rems-2021"), W1, CERTIFIED, date(2023, 10, 20))
    assert checked.allowed and [w.code for w in checked.warnings] == [
        "WHOLESALER_RECERTIFICATION_DUE"
    ]


def test_paused_under_discretion_ships_and_says_what_would_have_failed() -> None:
    checked = may_ship(
        PACKS.get("clozapine-rems-2021+discretion"), W1, UNCERTIFIED, date(2022, 3, 1)
    )
    assert checked.outcome == ShipOutcome.PAUSED and checked.allowed and checked.reasons == ()
    assert [w.code for w in checked.warnings] == ["SHIPMENT_CHECK_PAUSED", "PHARMACY_NOT_CERTIFIED"]
    assert "PHARMACY_NOT_CERTIFIED" in checked.warnings[0].text


def test_not_applicable_once_the_rems_ended() -> None:
    checked = may_ship(PACKS.get("clozapine-label-2025"), None, None, date(2025, 7, 1))
    assert checked.outcome == ShipOutcome.NOT_APPLICABLE and checked.allowed
    assert [w.code for w in checked.warnings] == ["SHIPMENT_CHECK_NOT_APPLICABLE"]


def test_every_pack_says_how_the_wholesaler_check_applies() -> None:
    modes = {i: PACKS.get(i).wholesaler_check.value for i in PACKS.ids if i != "auto"}
    assert modes == {
        "clozapine-rems-2021": "enforced",
        "clozapine-rems-2021+discretion": "paused",
        "clozapine-label-2025": "not_applicable",
    }


def test_cli_lookup_and_ship_check(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/cli.db"
    upgrade(db)
    with bootstrap(db) as loaded:  # the registry in process: the commands are what is tested
        run(loaded.service.load_registry(registry_from(registry()), Source("test")))
    found = cli("lookup", HOSPITAL, "--db", db)
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines()[0].startswith(f"pharmacy {HOSPITAL}  General Hospital")
    assert "  inpatient: NOT certified on" in found.stdout  # recertify by 2023-11-16 passed
    assert "(certified 2021-11-16, recertify by 2023-11-16)" in found.stdout
    missing = cli("lookup", "nobody", "--db", db)
    assert missing.returncode == 1 and "nothing in the registry" in missing.stderr
    allowed = cli(
        "ship-check", "--wholesaler", "W1", "--pharmacy", HOSPITAL, "--on", "2022-03-01", "--db", db
    )
    assert allowed.returncode == 0 and allowed.stdout.startswith("allowed"), allowed.stdout
    refused = cli(
        "ship-check", "--wholesaler", f"{DEA}|RA1234563", "--pharmacy", CORNER, "--db", db
    )
    assert refused.returncode == 1 and refused.stdout.startswith("refused")
    assert "reason PHARMACY_NOT_CERTIFIED" in refused.stdout
    engine = make_engine(db)
    try:
        with engine.connect() as conn:
            records = [r for r in Store(conn).audit_records() if r.kind != "registry"]
    finally:
        engine.dispose()
    assert [(r.kind, r.channel, r.outcome) for r in records] == [
        ("lookup", "cli", "found"),
        ("lookup", "cli", "none"),
        ("ship_check", "cli", "allowed"),
        ("ship_check", "cli", "refused"),
    ]
