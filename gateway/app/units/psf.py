"""The Patient Status Form inside the service's units of work (docs/rules.md §4–5): a form
judged on submission, a pending form judged again when its prescriber signs it, and what an
accepted form changes (designation, treatment status events)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from gateway.app.context import UnitContext
from gateway.app.units import labs
from gateway.app.values import Source
from rems_core import monitoring
from rems_core.codes import Code, finding
from rems_core.model import (
    Identifier,
    Patient,
    PatientSnapshot,
    PatientStatusForm,
    PsfOutcome,
    PsfStatus,
    StoredPsf,
    SubmitterRole,
)
from rems_core.psf import judge_psf, signed_by_certified_prescriber, signed_form, signer_problem
from rems_core.psf_entry import Entry, entry_of, repeated, with_conflict
from rems_core.rulepack import RulePack
from rems_core.store.repo import Store


def submit(
    ctx: UnitContext,
    store: Store,
    identifiers: list[Identifier],
    form: PatientStatusForm,
    source: Source,
    pack: RulePack,
) -> PsfOutcome:
    patient = store.find_patient(identifiers)
    if patient is None:
        return PsfOutcome(PsfStatus.REJECTED, (finding(Code.PATIENT_NOT_MATCHED),))
    form = _with_designees_prescriber(store, form)
    entry, earlier = entry_of(pack, form, store.psfs(patient.rems_id), ctx.tz)
    if entry == Entry.REPEAT:
        assert earlier is not None
        return _repeat(pack, earlier, patient, ctx)
    own = labs.store_reported_ancs(ctx, store, patient, form.anc, form.submitted_at, source)
    snapshot = store.snapshot(patient, [form.submitter, form.prescriber_npi])
    judgement = judge_psf(pack, snapshot, form, own, ctx.tz)
    if entry == Entry.CONFLICT and not pack.advisory:
        assert earlier is not None
        signed = signed_by_certified_prescriber(snapshot, form)
        judgement = with_conflict(judgement, earlier, signed, ctx.tz)
    # What the lab rules said of the form's own ANCs (e.g. a suspect unit) is news to the
    # prescriber too.
    warnings = tuple(dict.fromkeys((*judgement.warnings, *(w for a in own for w in a.warnings))))
    stored = StoredPsf(ctx.ids.new_id("psf"), form, judgement.status, form.submitted_at)
    versions = (pack.id, pack.version)
    store.add_psf(stored, patient.rems_id, judgement.reasons, warnings, versions, source.channel)
    if judgement.status == PsfStatus.ACCEPTED:
        _record_acceptance(ctx, store, pack, snapshot, stored, patient)
    return PsfOutcome(
        judgement.status, judgement.reasons, warnings, stored.psf_id, *versions, patient.rems_id
    )


def _repeat(pack: RulePack, held: StoredPsf, patient: Patient, ctx: UnitContext) -> PsfOutcome:
    """The same PSF again (§5.7): the one on file answers, nothing is stored."""
    return PsfOutcome(
        held.status,
        (),
        (repeated(held, ctx.tz),),
        held.psf_id,
        pack.id,
        pack.version,
        patient.rems_id,
    )


def _with_designees_prescriber(store: Store, form: PatientStatusForm) -> PatientStatusForm:
    """A designee's PSF that names no prescriber is for the one prescriber it acts for."""
    if form.role != SubmitterRole.DESIGNEE or form.prescriber_npi not in ("", form.submitter):
        return form
    prescribers = store.prescribers_of_designee(form.submitter)
    return replace(form, prescriber_npi=prescribers[0]) if len(prescribers) == 1 else form


def _record_acceptance(
    ctx: UnitContext,
    store: Store,
    pack: RulePack,
    before: PatientSnapshot,
    psf: StoredPsf,
    patient: Patient,
) -> None:
    designation = psf.form.designation
    if designation is not None and designation != patient.designation:
        store.set_designation(patient.rems_id, designation)  # accepted: signed if BEN/hospice
    old, _ = monitoring.treatment_status(pack, before, psf.judged_at, ctx.tz)
    if old.value != psf.form.treatment_status.value:
        store.add_status_event(
            patient.rems_id,
            psf.judged_at,
            old.value,
            psf.form.treatment_status.value,
            psf.form.signed_by or psf.form.submitter,
            f"PSF {psf.psf_id} ({psf.form.type.value})",
        )


def sign(
    ctx: UnitContext,
    store: Store,
    identifiers: list[Identifier],
    signer: str,
    at: datetime,
    pack: RulePack,
    psf_id: str | None,
) -> PsfOutcome:
    patient = store.find_patient(identifiers)
    if patient is None:
        return PsfOutcome(PsfStatus.REJECTED, (finding(Code.PATIENT_NOT_MATCHED),))
    pending = [
        p
        for p in store.psfs(patient.rems_id)
        if p.status == PsfStatus.PENDING_PRESCRIBER_SIGNATURE and psf_id in (None, p.psf_id)
    ]
    if not pending:
        return PsfOutcome(
            PsfStatus.REJECTED, (finding(Code.NO_PENDING_PSF),), patient=patient.rems_id
        )
    target = pending[-1]
    snapshot = store.snapshot(patient, [signer, target.form.prescriber_npi])
    problem = signer_problem(snapshot, target, signer)
    if problem:
        reason = finding(
            Code.SUBMITTER_NOT_AUTHORIZED,
            submitter=signer,
            prescriber=target.form.prescriber_npi,
            why=problem,
        )
        return PsfOutcome(
            PsfStatus.REJECTED, (reason,), psf_id=target.psf_id, patient=patient.rems_id
        )
    form = signed_form(target, signer, at)
    judgement = judge_psf(pack, snapshot, form, [], ctx.tz)
    signed = StoredPsf(target.psf_id, form, judgement.status, at)
    versions = (pack.id, pack.version)
    store.update_psf(signed, judgement.reasons, judgement.warnings, versions)
    if judgement.status == PsfStatus.ACCEPTED:
        _record_acceptance(ctx, store, pack, snapshot, signed, patient)
    return PsfOutcome(
        judgement.status,
        judgement.reasons,
        judgement.warnings,
        target.psf_id,
        *versions,
        patient.rems_id,
    )
