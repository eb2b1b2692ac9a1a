"""The Patient Status Form over FHIR: our Questionnaires, QuestionnaireResponse submission
(`POST /QuestionnaireResponse`, `$submit`) and the prescriber's signature (`$sign`).

Signing (docs/contracts.md §3) is an act of a signed-in prescriber: a user whose fhirUser is
`Practitioner/<NPI>`. A response counts as signed when that prescriber submits it for themself
(unless its `signature` answer is false: a draft to sign later), or when they `$sign` it. A
`signature` answer of true from anyone else — a system client, a designee, another prescriber —
is refused with 403 and nothing is stored: saying "signed" must not quietly mean "pending".
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from gateway.app.errors import Changed, NotADraft, NotPending, UnknownSubject
from gateway.app.values import PsfRecorded, PsfSubmission, ResourceDraft, SignRequest, Source
from gateway.fhir.auth import Principal, requires
from gateway.fhir.http import FhirError, FhirResponse, check_format, json_body
from gateway.fhir.reads import add_reads
from gateway.fhir.resources import (
    check_url_id,
    clinical_now,
    context_of,
    reads_of,
    search_bundle,
    searchset,
    service_of,
    validated,
    written,
)
from gateway.fhir.search import PAGING, page, search_parameters
from mappings.fhir.content import content_hash
from mappings.fhir.outcome import Issue
from mappings.fhir.psf_outcome import (
    psf_issues,
    signature_extension,
    stored_outcome,
    with_outcome,
)
from mappings.fhir.questionnaire import PsfReading, questionnaires
from mappings.fhir.questionnaire import questionnaire_id as questionnaire_named
from mappings.fhir.questionnaire import read_response as read_qr
from mappings.fhir.references import token
from rems_core.codes import Code
from rems_core.model import PatientStatusForm, PsfOutcome
from rems_core.store.fhir_repo import ResourceIndex, StoredResource

router = APIRouter(tags=["Questionnaire", "QuestionnaireResponse"])
TYPE = "QuestionnaireResponse"
RESPONSE_STATUSES = ("in-progress", "completed", "amended", "stopped", "entered-in-error")
QUESTIONNAIRE_SEARCH = ("url",)
RESPONSE_SEARCH = ("patient", "status")


# --- Questionnaire -------------------------------------------------------------------------


@router.get("/Questionnaire/{questionnaire_id}")
async def read_questionnaire(
    request: Request,
    questionnaire_id: str,
    _: Annotated[Principal, requires("Questionnaire", "read")],
) -> FhirResponse:
    check_format(request)
    found = questionnaires().get(questionnaire_id)
    if found is None:
        raise FhirError(404, "not-found", f"Questionnaire/{questionnaire_id} is not known")
    return FhirResponse(found, 200)


@router.get("/Questionnaire")
async def search_questionnaires(
    request: Request,
    _: Annotated[Principal, requires("Questionnaire", "search")],
    url: str | None = None,
) -> FhirResponse:
    """Both forms (the monthly / status-change PSF and the enrollment PSF), or the one whose
    canonical `url` is given (`url|version` too)."""
    check_format(request)
    used = search_parameters(request, QUESTIONNAIRE_SEARCH)
    wanted = url.partition("|") if url is not None else None
    entries = [
        ("Questionnaire", qid, q)
        for qid, q in questionnaires().items()
        if wanted is None
        or (q.get("url") == wanted[0] and (not wanted[2] or q.get("version") == wanted[2]))
    ]
    return FhirResponse(search_bundle(request, used, entries, len(entries)), 200)


# --- QuestionnaireResponse: submission -------------------------------------------------------


def checked(request: Request, data: dict[str, Any], now: datetime) -> PsfReading:
    """The response read against its Questionnaire; 422 with every problem otherwise."""
    reading = read_qr(validated(data, TYPE), now, context_of(request).tz)
    if reading.problems:
        raise FhirError(422, "invalid", "", issues=reading.problems)
    return reading


def response_in(data: dict[str, Any]) -> dict[str, Any]:
    """`$submit` takes the response itself, or Parameters holding it."""
    if data["resourceType"] != "Parameters":
        return data
    for parameter in data.get("parameter") or []:
        resource = parameter.get("resource") if isinstance(parameter, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == TYPE:
            return resource
    raise FhirError(
        400, "required", "Parameters must hold a QuestionnaireResponse", ("Parameters.parameter",)
    )


def as_signed(
    principal: Principal, form: PatientStatusForm, answer: bool | None
) -> PatientStatusForm:
    """The form signed when its prescriber submits it signed in; 403 for a signature claimed by
    anyone else, or a user submitting in another's name."""
    user = principal.prescriber_npi
    if user is not None and user != form.submitter:
        raise FhirError(403, "forbidden", "a signed-in user submits forms as their author only")
    if user is None or user != form.prescriber_npi:
        if answer:
            raise FhirError(
                403,
                "forbidden",
                "only the prescriber named on the form, signed in as themself, can sign it; "
                "submit it without the signature to hold it for the prescriber",
                ("QuestionnaireResponse.item.where(linkId='signature')",),
            )
        return form
    if answer is False:
        return form  # the prescriber's own draft, to $sign later
    return replace(form, signed=True, signed_by=user, signed_at=form.submitted_at)


async def submit(
    request: Request, principal: Principal, data: dict[str, Any], draft_id: str | None = None
) -> Response:
    """``draft_id``: a PUT completing one of the gateway's monthly drafts (docs/contracts.md
    §7), stored as its next version."""
    now = clinical_now(request, data)
    reading = checked(request, data, now)
    if reading.form is None or reading.subject is None:  # checked() refuses these; never a 500
        raise FhirError(422, "incomplete", "the response does not make a complete PSF")
    form = as_signed(principal, reading.form, reading.signature)
    signature = signature_extension(form.signed_by, form.submitted_at) if form.signed_by else None
    draft = ResourceDraft(
        TYPE,
        data,
        content_hash(data),
        ResourceIndex(reading.identifier, None, reading.questionnaire, form.submitted_at),
        resource_id=draft_id,
    )
    submission = PsfSubmission(
        draft,
        form,
        reading.subject.identifiers,
        reading.subject.patient_id,
        lambda body, outcome: with_outcome(body, outcome, signature),
        now,
    )
    source = Source("fhir", principal.client_id)
    try:
        done = await service_of(request).submit_psf_resource(submission, source)
    except UnknownSubject:
        raise FhirError(
            422,
            "not-found",
            "subject names a Patient the gateway does not know",
            (f"{TYPE}.subject",),
        ) from None
    except NotADraft as refused:
        raise _not_a_draft(draft_id, refused) from None
    return answer(request, done)


def _not_a_draft(draft_id: str | None, refused: NotADraft) -> FhirError:
    if not refused.known:
        return FhirError(404, "not-found", f"{TYPE}/{draft_id} is not known")
    return FhirError(
        409,
        "conflict",
        "an update completes one of the gateway's open monthly drafts only: "
        "submit another PSF with POST",
    )


def answer(request: Request, done: PsfRecorded) -> Response:
    assert done.recorded is not None
    stored = done.recorded.resource
    outcome = done.outcome or stored_outcome(stored.body)
    issues = psf_issues(outcome) if outcome else []
    return written(request, stored, done.recorded.created, issues)


@router.post("/QuestionnaireResponse")
async def create_questionnaire_response(
    request: Request, principal: Annotated[Principal, requires(TYPE, "create")]
) -> Response:
    """Submit a PSF; its outcome is an extension of the stored response, and the OperationOutcome
    with `Prefer: return=OperationOutcome`."""
    check_format(request)
    return await submit(request, principal, await json_body(request))


@router.put("/QuestionnaireResponse/{resource_id}")
async def complete_draft(
    request: Request,
    resource_id: str,
    principal: Annotated[Principal, requires(TYPE, "update")],
) -> Response:
    """Complete a monthly draft: the response, `completed`, is an ordinary PSF submission
    stored as the draft's next version."""
    check_format(request)
    data = await json_body(request)
    check_url_id(data, TYPE, resource_id)
    return await submit(request, principal, data, resource_id)


@router.get("/QuestionnaireResponse")
async def search_questionnaire_responses(
    request: Request,
    _: Annotated[Principal, requires(TYPE, "search")],
    patient: str | None = None,
    status: str | None = None,
    count: Annotated[int | None, Query(alias="_count")] = None,
    offset: Annotated[int | None, Query(alias="_offset")] = None,
) -> FhirResponse:
    """By `patient` (an id or `Patient/{id}`) and `status` (`in-progress`: the monthly drafts
    waiting to be completed; `completed`, `amended`, `stopped`), `_count`, `_offset`."""
    check_format(request)
    used = search_parameters(request, (*RESPONSE_SEARCH, *PAGING))
    if status is not None and status not in RESPONSE_STATUSES:
        known = ", ".join(RESPONSE_STATUSES)
        raise FhirError(400, "value", f"status is one of {known}", ("status",))
    limit, skip = page(count, offset)
    patient_id = patient.removeprefix("Patient/") if patient else None
    found, total = await reads_of(request).responses(patient_id, status, limit, skip)
    return searchset(request, used, found, total, skip, limit)


@router.post("/QuestionnaireResponse/$submit")
async def submit_questionnaire_response(
    request: Request, principal: Annotated[Principal, requires(TYPE, "create")]
) -> Response:
    check_format(request)
    return await submit(request, principal, response_in(await json_body(request)))


# --- QuestionnaireResponse: signature, reads -------------------------------------------------


@router.post("/QuestionnaireResponse/{resource_id}/$sign")
async def sign_questionnaire_response(
    request: Request,
    resource_id: str,
    principal: Annotated[Principal, requires(TYPE, "update")],
) -> Response:
    """The signed-in prescriber signs the PSF this response holds for their signature; the
    response's next version carries the new outcome and the signature."""
    check_format(request)
    signer = principal.prescriber_npi
    if signer is None:
        raise FhirError(403, "forbidden", "a system client cannot sign: sign in as the prescriber")
    service = service_of(request)
    current = await reads_of(request).resource(TYPE, resource_id)
    if current is None:
        raise FhirError(404, "not-found", f"{TYPE}/{resource_id} is not known")
    sign = sign_request(current, signer, clinical_now(request))
    try:
        done = await service.sign_psf_resource(sign, Source("fhir", principal.client_id))
    except NotPending as refused:
        status = refused.status.value if refused.status else "not a PSF"
        raise FhirError(
            409,
            "conflict",
            f"the form is not pending a signature ({status})",
            rems_code=Code.NO_PENDING_PSF,
        ) from None
    except Changed:
        raise FhirError(
            409, "conflict", "the response changed meanwhile: read it and retry"
        ) from None
    if done.recorded is None:
        assert done.outcome is not None
        raise FhirError(
            403, "forbidden", "the signature was refused", issues=_refused(done.outcome)
        )
    return answer(request, done)


def sign_request(current: StoredResource, signer: str, at: datetime) -> SignRequest:
    outcome = stored_outcome(current.body)
    if outcome is None or not outcome.psf_id or not outcome.patient:
        raise FhirError(409, "conflict", "this response holds no PSF pending a signature")

    def next_version(body: dict[str, Any], signed: PsfOutcome) -> ResourceDraft:
        new_body = with_outcome(body, signed, signature_extension(signer, at))
        # Found as the first version was: by its questionnaire and the form's authored time.
        code = questionnaire_named(body.get("questionnaire"))
        index = ResourceIndex(_identifier(body), signed.patient, code, _authored(body) or at)
        return ResourceDraft(TYPE, new_body, content_hash(new_body), index, resource_id=current.id)

    return SignRequest(
        current.id, current.version_id, outcome.psf_id, outcome.patient, signer, at, next_version
    )


def _authored(body: dict[str, Any]) -> datetime | None:
    try:
        authored = datetime.fromisoformat(str(body.get("authored", "")))
    except ValueError:
        return None
    return authored if authored.tzinfo is not None else None


def _identifier(body: dict[str, Any]) -> str | None:
    identifier = body.get("identifier") or {}
    return token(identifier.get("system"), identifier["value"]) if "value" in identifier else None


def _refused(outcome: PsfOutcome) -> list[Issue]:
    return [Issue("error", "forbidden", r.text, rems_code=r.code) for r in outcome.reasons]


add_reads(router, TYPE)
