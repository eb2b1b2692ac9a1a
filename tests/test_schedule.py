"""docs/rules.md §8: scheduled work up to a time — overdue labs, labs missed, legacy enrollment."""

from __future__ import annotations

from sqlalchemy import Engine, select

from gateway.app.service import RemsService
from gateway.app.values import Source
from rems_core.model import Identifier, PatientStatusForm, PsfType, SubmitterRole
from rems_core.registry import RegistryDocument
from rems_core.store import tables
from tests.builders import PRESCRIBER, at
from tests.conftest import run


def registry() -> RegistryDocument:
    return RegistryDocument.model_validate(
        {
            "prescribers": [{"npi": PRESCRIBER, "certified": True}],
            "patients": [
                {
                    "id": "P1",
                    "identifiers": [{"system": "urn:oid:1.2.3", "value": "MRN1"}],
                    "treatment_start": "2020-01-01",
                    "enrollment": {
                        "by": PRESCRIBER,
                        "date": "2022-01-28",
                        "anc": {"value": "2100", "unit": "/uL", "drawn": "2022-01-28"},
                    },
                },
                {
                    "id": "L1",
                    "identifiers": [{"system": "urn:oid:1.2.3", "value": "MRN2"}],
                    "legacy_enrolled": True,
                },
            ],
        }
    )


def alerts(engine: Engine) -> list[tuple[str, str]]:
    table = tables.MonitoringAlert.__table__
    with engine.connect() as conn:
        return [(r.patient_id, r.code) for r in conn.execute(select(table).order_by(table.c.id))]


def test_labs_missed_is_found_after_more_than_30_days_once(
    service: RemsService, engine: Engine
) -> None:
    ids = run(service.load_registry(registry(), Source("test")))
    assert "LABS_MISSED" not in {
        f.code for f in run(service.run_scheduled(at("2022-02-27")))[ids["P1"]]
    }
    found = run(service.run_scheduled(at("2022-02-28")))
    assert {f.code for f in found[ids["P1"]]} == {"LABS_MISSED", "ANC_OVERDUE"}
    run(service.run_scheduled(at("2022-03-01")))  # restart-safe: no second alert
    assert alerts(engine).count((ids["P1"], "LABS_MISSED")) == 1


def test_legacy_patients_become_not_enrolled_after_the_deadline(
    service: RemsService, engine: Engine
) -> None:
    ids = run(service.load_registry(registry(), Source("test")))
    run(service.run_scheduled(at("2021-12-22")))
    assert (ids["L1"], "LEGACY_ENROLLMENT_ENDED") not in alerts(engine)
    run(service.run_scheduled(at("2021-12-23")))
    run(service.run_scheduled(at("2021-12-24")))
    assert alerts(engine).count((ids["L1"], "LEGACY_ENROLLMENT_ENDED")) == 1
    events = tables.StatusEvent.__table__
    with engine.connect() as conn:
        to = (
            conn.execute(select(events.c.to_status).where(events.c.patient_id == ids["L1"]))
            .scalars()
            .all()
        )
    assert to == ["not_enrolled"]


def test_a_monthly_psf_is_no_re_enrollment(service: RemsService, engine: Engine) -> None:
    ids = run(service.load_registry(registry(), Source("test")))
    legacy = [
        Identifier("urn:oid:1.2.3", "MRN2"),
    ]
    form = PatientStatusForm(
        PsfType.MONTHLY,
        at("2021-12-01"),
        PRESCRIBER,
        SubmitterRole.PRESCRIBER,
        PRESCRIBER,
        signed=True,
    )
    assert run(service.submit_psf(legacy, form, Source("test"))).accepted  # enrolled until 12-22
    run(service.run_scheduled(at("2021-12-23")))
    assert (ids["L1"], "LEGACY_ENROLLMENT_ENDED") in alerts(engine)
