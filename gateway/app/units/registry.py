"""Loading the registry block (docs/contracts.md §1–§2): an upsert that audits every change.

A patient's ``enrollment`` is an accepted enrollment PSF submitted at the start of its day, its
ANCs stored as lab results; loading the same block again changes nothing.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, tzinfo
from typing import Any

from gateway.app import audit_records
from gateway.app.context import UnitContext
from gateway.app.units import labs
from gateway.app.values import Source
from rems_core.model import (
    PatientStatusForm,
    PsfStatus,
    PsfType,
    ReportedAnc,
    StoredPsf,
    SubmitterRole,
)
from rems_core.parties import PartyKind
from rems_core.registry import AncEntry, PatientEntry, RegistryDocument
from rems_core.store.registry_repo import Change
from rems_core.store.repo import Store

WHOLESALER, DISTRIBUTOR = PartyKind.WHOLESALER, PartyKind.DISTRIBUTOR


def start_of_day(day: date, tz: tzinfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def load(ctx: UnitContext, store: Store, doc: RegistryDocument, source: Source) -> dict[str, str]:
    """Upsert everything; the REMS patient ids by handle (or first identifier value)."""
    now = ctx.now()
    changes: list[tuple[str, Change, Any]] = []  # with the entry that made each change
    for prescriber in doc.prescribers:
        changes += [(*c, prescriber) for c in store.upsert_prescriber(prescriber)]
    for pharmacy in doc.pharmacies:
        changes += [(*c, pharmacy) for c in store.upsert_pharmacy(pharmacy)]
    for kind, partners in ((WHOLESALER, doc.wholesalers), (DISTRIBUTOR, doc.distributors)):
        for partner in partners:
            changes += [(*c, partner) for c in store.upsert_trade_partner(kind, partner)]
    handles = {}
    for entry in doc.patients:
        patient_id, patient_changes = store.upsert_patient(entry, ctx.ids.new_id("RP"))
        changes += [(*c, entry) for c in patient_changes]
        handles[entry.id or entry.identifiers[0].value] = patient_id
        if entry.enrollment and not store.registry_enrollment_exists(patient_id):
            _enrollment(ctx, store, entry, patient_id, source)
    for subject, change, entry in changes:
        store.append_audit(
            audit_records.registry_change(
                now,
                source,
                subject,
                change.kind,
                change.fields,
                entry.model_dump(mode="json"),
                now,
            )
        )
    return handles


def _reported(anc: AncEntry, tz: tzinfo) -> ReportedAnc:
    drawn = anc.drawn
    if not isinstance(drawn, datetime):
        drawn = start_of_day(drawn, tz)
    elif drawn.tzinfo is None:
        drawn = drawn.replace(tzinfo=tz)
    return ReportedAnc(anc.value, anc.unit, drawn.astimezone(UTC), anc.code)


def _enrollment(
    ctx: UnitContext, store: Store, entry: PatientEntry, patient_id: str, source: Source
) -> None:
    enrollment = entry.enrollment
    assert enrollment is not None
    at = start_of_day(enrollment.date, ctx.tz)
    by_prescriber = bool(store.prescribers([enrollment.by]))
    form = PatientStatusForm(
        type=PsfType.ENROLLMENT,
        submitted_at=at,
        submitter=enrollment.by,
        role=SubmitterRole.PRESCRIBER if by_prescriber else SubmitterRole.DESIGNEE,
        prescriber_npi=enrollment.prescriber or enrollment.by,
        designation=entry.designation,
        monitoring_frequency=enrollment.monitoring_frequency,
        anc=tuple(_reported(a, ctx.tz) for a in enrollment.anc),
        signed=by_prescriber,
    )
    patient = store.patient(patient_id)
    labs.store_reported_ancs(ctx, store, patient, form.anc, at, source)
    stored = StoredPsf(ctx.ids.new_id("psf"), form, PsfStatus.ACCEPTED, at)
    store.add_psf(stored, patient_id, (), (), ("registry", ""), "registry")
    store.add_status_event(patient_id, at, "not_enrolled", "active", enrollment.by, "enrollment")
