"""Patient Status Forms from FHIR, inside the service's units of work: a QuestionnaireResponse
version is stored together with its PSF's outcome, and a prescriber's signature stores the next
version with the new outcome — or nothing changes."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from gateway.app.context import UnitContext
from gateway.app.errors import Changed, NotADraft, NotPending, UnknownSubject
from gateway.app.units import worklist
from gateway.app.units.fhir_records import existing, put
from gateway.app.values import PsfRecorded, PsfSubmission, Recorded, SignRequest
from rems_core.model import Identifier, PsfOutcome, PsfStatus, StoredPsf
from rems_core.store.repo import Store

TYPE = "QuestionnaireResponse"


def resent(store: Store, submission: PsfSubmission) -> PsfRecorded | None:
    """The same response again (same identifier, same content): its stored version, unjudged."""
    current = existing(store, submission.draft)
    if current is None or current.content_hash != submission.draft.content_hash:
        return None
    return PsfRecorded(Recorded(current, created=False, unchanged=True), None)


def open_draft(store: Store, submission: PsfSubmission) -> str | None:
    """The id of the open monthly draft a PUT completes (None: the response is a new one);
    NotADraft for an update of any other response."""
    resource_id = submission.draft.resource_id
    if resource_id is None:
        return None
    draft = store.draft(resource_id)
    if draft is None or draft["status"] != worklist.OPEN:
        raise NotADraft(known=store.current_resource(TYPE, resource_id) is not None)
    return resource_id


def draft_done(store: Store, draft_id: str | None, outcome: PsfOutcome, at: datetime) -> None:
    """A completion of the draft that counts (accepted) or waits for the prescriber's signature
    closes it; a rejected one leaves it open (the worklist writes it back as in progress)."""
    if draft_id is not None and outcome.status != PsfStatus.REJECTED:
        worklist.draft_submitted(store, draft_id, at)


def subject_identifiers(store: Store, submission: PsfSubmission) -> list[Identifier]:
    if submission.patient_id is None:
        return list(submission.patient_identifiers)
    patient = store.patient(submission.patient_id)
    if patient is None:
        raise UnknownSubject(submission.patient_id)
    return list(patient.identifiers)


def keep(
    ctx: UnitContext, store: Store, submission: PsfSubmission, outcome: PsfOutcome
) -> PsfRecorded:
    """The response's version, with the outcome of its PSF."""
    draft = submission.draft
    draft = replace(draft, index=replace(draft.index, patient_id=outcome.patient))
    done = put(ctx, store, draft, submission.received, lambda body: submission.shape(body, outcome))
    return PsfRecorded(done, outcome)


def pending(store: Store, request: SignRequest) -> StoredPsf:
    """The form the request means, if it waits for a signature; whether this signer may sign it
    is the rules' question (rems_core.psf.signer_problem), answered in the unit of work."""
    current = store.current_resource("QuestionnaireResponse", request.resource_id)
    if current is None or current.version_id != request.version_id:
        raise Changed(request.resource_id)
    form = _psf(store, request.patient_id, request.psf_id)
    if form is None or form.status != PsfStatus.PENDING_PRESCRIBER_SIGNATURE:
        raise NotPending(form.status if form else None)
    return form


def patient_identifiers(store: Store, patient_id: str) -> list[Identifier]:
    patient = store.patient(patient_id)
    return list(patient.identifiers) if patient else []


def keep_signature(
    ctx: UnitContext, store: Store, request: SignRequest, outcome: PsfOutcome
) -> PsfRecorded:
    """The next version with the signed form's outcome, when the signature changed the form; a
    signature the rules refused (e.g. a decertified prescriber) changes nothing."""
    form = _psf(store, request.patient_id, request.psf_id)  # None: rejected now
    if form is not None and form.status == PsfStatus.PENDING_PRESCRIBER_SIGNATURE:
        return PsfRecorded(None, outcome)
    current = store.current_resource("QuestionnaireResponse", request.resource_id)
    assert current is not None  # pending() found it in this unit of work
    draft = request.next_version(current.body, outcome)
    return PsfRecorded(put(ctx, store, draft, request.at), outcome)


def _psf(store: Store, patient_id: str, psf_id: str) -> StoredPsf | None:
    return next((p for p in store.psfs(patient_id) if p.psf_id == psf_id), None)
