"""Bundles as senders make them (docs/contracts.md §5): `transaction` and `batch` to `POST /fhir`
(FHIR's endpoint for them), any other Bundle to `POST /fhir/Bundle` (a `collection`: stored as a
Bundle, its entries understood as a batch's), `message` to `POST /fhir/$process-message`
(messaging.py).

Every entry is read and checked first (its type's write scope, its resource, the references to
other entries); then all of them are stored in one unit of work, references between entries
rewritten to their ids. A transaction is all or nothing; a batch or collection answers each
entry on its own. An entry equal to what is stored is answered 200 from the store, so a Bundle
sent again changes nothing. Each entry's answer carries its status, Location, ETag and an
OperationOutcome of its REMS effect.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.app.errors import BundleRefused, ClientIdTaken, IdentifierTaken, VersionConflict
from gateway.app.values import (
    BundleItem,
    BundleRecorded,
    EntrySubmission,
    PatientRecorded,
    Recorded,
    ResourceDraft,
    Source,
)
from gateway.fhir.auth import INTERACTION_LETTERS, Principal
from gateway.fhir.bundle_effects import ALREADY_STORED, effects
from gateway.fhir.bundle_entries import (
    OBSERVATION,
    REPORT,
    WITH_REQUEST,
    Entry,
    Fallback,
    bundle_entries,
    bundle_kind,
    fallbacks,
    in_entry,
    references,
    resolved,
    unresolved,
)
from gateway.fhir.diagnostic_reports import report_submission
from gateway.fhir.http import (
    FhirError,
    FhirResponse,
    check_format,
    etag,
    json_body,
    prefer_return,
    version_of,
)
from gateway.fhir.observations import conditional_identifier, reading, submission
from gateway.fhir.patients import patient_issues, patient_submission
from gateway.fhir.reads import add_reads
from gateway.fhir.resources import (
    absolute,
    clinical_now,
    id_taken,
    location,
    service_of,
    validated,
    written,
)
from mappings.fhir.content import content_hash
from mappings.fhir.outcome import Issue, operation_outcome
from rems_core.store.fhir_repo import ResourceIndex

INTERACTION = {"POST": "create", "PUT": "update"}
PLACEHOLDER = "to-be-assigned"


@dataclass
class Answer:
    """What one entry got: its status, what was stored, and its issues."""

    status: int
    recorded: Recorded | None = None
    issues: list[Issue] = field(default_factory=list)


# --- each entry read and checked --------------------------------------------------------------


def allowed(principal: Principal, entry: Entry) -> FhirError | None:
    interaction = INTERACTION[entry.method]
    if principal.allows(entry.resource_type, interaction):
        return None
    scope = f"system/{entry.resource_type}.{INTERACTION_LETTERS[interaction]}"
    return FhirError(403, "forbidden", f"entry {entry.index}: this token does not grant {scope}")


def entry_submission(
    request: Request, entry: Entry, body: dict[str, Any], own_id: str, fallback: Fallback
) -> EntrySubmission:
    """What the entry is, its references rewritten (``body``) and its id known."""
    expected = version_of(entry.if_match) if entry.if_match else None
    match entry.resource_type:
        case "Patient":
            return patient_submission(body, own_id, entry.if_none_exist)
        case "Observation":
            found = reading(request, _dated(body, fallback), fallback.specimen)
            return submission(body, found, own_id, entry.if_none_exist, expected)
        case "DiagnosticReport":
            return report_submission(request, body, own_id, entry.if_none_exist, expected)
    validated(body, entry.resource_type)
    digest = content_hash(body)
    return ResourceDraft(
        entry.resource_type, body, digest, ResourceIndex(), resource_id=own_id, if_match=expected
    )


def _dated(body: dict[str, Any], fallback: Fallback) -> dict[str, Any]:
    """The Observation as its result is read: without `effective[x]` of its own, its report's
    or specimen's (the stored resource stays as sent)."""
    moment = fallback.effective
    if moment is None or "effectiveDateTime" in body or "effectivePeriod" in body:
        return body
    element = "effectivePeriod" if isinstance(moment, dict) else "effectiveDateTime"
    return body | {element: moment}


def _lookup_identifier(entry: Entry) -> str | None:
    """What a create is found by when it is sent again: its If-None-Exist identifier, or (for
    Observations and DiagnosticReports) its business identifier."""
    if entry.method != "POST":
        return None
    if entry.if_none_exist is not None:
        return conditional_identifier(entry.if_none_exist)
    if entry.resource_type not in (OBSERVATION, REPORT):
        return None
    for identifier in entry.resource.get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("value"):
            return f"{identifier.get('system') or ''}|{identifier['value']}"
    return None


@dataclass
class Plan:
    """The entries that will be stored, and the ones refused before (number → its error)."""

    items: list[BundleItem]
    errors: dict[int, FhirError]


def plan(request: Request, principal: Principal, read: list[Entry | FhirError], kind: str) -> Plan:
    """Every entry checked with placeholder ids (so that nothing fails once the unit of work
    runs); an entry referring to a refused one is refused too."""
    errors: dict[int, FhirError] = {}
    entries: list[Entry] = []
    for number, item in enumerate(read):
        refused = item if isinstance(item, FhirError) else allowed(principal, item)
        if refused is not None:
            errors[number] = refused
        else:
            entries.append(item)
    if kind == "transaction" and errors:
        return Plan([], errors)
    backs = fallbacks(entries)
    while True:
        taken = [e for e in entries if e.index not in errors]
        known = {key for e in taken for key in e.keys}
        ids = {
            key: f"{e.resource_type}/{e.resource_id or PLACEHOLDER}"
            for e in taken
            for key in e.keys
        }
        found = {
            e.index: error for e in taken if (error := _refusal(request, e, known, ids, backs))
        }
        if not found:
            break
        errors |= found
    items = [bundle_item(request, entry, backs, known) for entry in taken]
    return Plan(items, errors)


def _refusal(
    request: Request,
    entry: Entry,
    known: set[str],
    ids: dict[str, str],
    backs: dict[int, Fallback],
) -> FhirError | None:
    try:
        if (missing := unresolved(entry, known)) is not None:
            raise missing
        body = resolved(entry.resource, ids)
        fallback = backs.get(entry.index, Fallback())
        entry_submission(request, entry, body, entry.resource_id or PLACEHOLDER, fallback)
        _lookup_identifier(entry)
    except FhirError as error:
        return in_entry(entry, error)
    return None


def bundle_item(
    request: Request, entry: Entry, backs: dict[int, Fallback], known: set[str]
) -> BundleItem:
    """The entry as the unit of work takes it (``known``: the keys of the Bundle's entries)."""
    fallback = backs.get(entry.index, Fallback())

    def build(own_id: str, ids: dict[str, str]) -> EntrySubmission:
        body = resolved(entry.resource, ids)
        return entry_submission(request, entry, body, own_id, fallback)

    return BundleItem(
        entry.index,
        entry.resource_type,
        entry.keys,
        entry.resource_id,
        _lookup_identifier(entry),
        frozenset(r for r in references(entry.resource) if r in known) - entry.keys,
        lambda ids: content_hash(resolved(entry.resource, ids)),
        build,
    )


# --- stored, and answered -----------------------------------------------------------------------


async def store_entries(
    request: Request,
    principal: Principal,
    read: list[Entry | FhirError],
    kind: str,
    now: datetime,
    extra: tuple[BundleItem, ...] = (),
) -> tuple[list[Answer], BundleRecorded]:
    """Each entry's answer, in the Bundle's order (a refused transaction raises FhirError)."""
    planned = plan(request, principal, read, kind)
    atomic = kind == "transaction"
    if atomic and planned.errors:
        raise _all(list(planned.errors.values()))
    source = Source("fhir", principal.client_id)
    try:
        done = await service_of(request).record_bundle(
            [*planned.items, *extra], source, now, atomic
        )
    except BundleRefused as refused:
        raise _all([refusal_error(read[n], e) for n, e in refused.refused.items()]) from None
    answers = {n: Answer(e.status, None, e.issues) for n, e in planned.errors.items()}
    answers |= {n: _refused_answer(read[n], e) for n, e in done.refused.items()}
    answers |= {n: patient_answer(p) for n, p in done.patients.items()}
    answers |= {n: stored_answer(r) for n, r in done.resources.items()}
    lab_entries = [_entry(read[n]) for n in done.lab_numbers]
    found = effects(lab_entries, done.lab_submissions, done.labs)
    for entry, stored in zip(lab_entries, done.labs.recorded, strict=True):
        status = 201 if stored.created else 200
        answers[entry.index] = Answer(status, stored, found.get(entry.index, []))
    return [answers[n] for n in range(len(read))], done


def _entry(item: Entry | FhirError) -> Entry:
    assert isinstance(item, Entry)
    return item


def refusal(resource_type: str, resource_id: str | None, refused: Exception) -> FhirError:
    """What the service refused (before storing anything), as the FHIR error it is."""
    if isinstance(refused, VersionConflict):
        return FhirError(412, "conflict", "If-Match names another version than the current one")
    if isinstance(refused, IdentifierTaken):
        text = f"another {resource_type} has this identifier"
        return FhirError(409, "duplicate", text, (f"{resource_type}.identifier",))
    assert isinstance(refused, ClientIdTaken)
    return id_taken(resource_type, resource_id)


def refusal_error(item: Entry | FhirError, refused: Exception) -> FhirError:
    entry = _entry(item)
    return in_entry(entry, refusal(entry.resource_type, entry.resource_id, refused))


def _refused_answer(item: Entry | FhirError, refusal: Exception) -> Answer:
    error = refusal_error(item, refusal)
    return Answer(error.status, None, error.issues)


def patient_answer(done: PatientRecorded) -> Answer:
    stored = done.recorded
    return Answer(201 if stored.created else 200, stored, patient_issues(done))


def stored_answer(done: Recorded) -> Answer:
    """A resource stored as received: no REMS effect to report."""
    return Answer(201 if done.created else 200, done, [ALREADY_STORED] if done.unchanged else [])


def _all(errors: list[FhirError]) -> FhirError:
    """A refused transaction answers every problem, with the first one's status."""
    issues = [issue for error in errors for issue in error.issues]
    return FhirError(errors[0].status, "", "", issues=issues)


def response_entry(request: Request, answer: Answer, prefer: str) -> dict[str, Any]:
    status = HTTPStatus(answer.status)
    response: dict[str, Any] = {"status": f"{status.value} {status.phrase}"}
    entry: dict[str, Any] = {}
    stored = answer.recorded.resource if answer.recorded else None
    if stored is not None:
        response |= {
            "location": location(stored),
            "etag": etag(stored.version_id),
            "lastModified": stored.last_updated.isoformat(),
        }
        entry["fullUrl"] = absolute(request, f"/{stored.resource_type}/{stored.id}")
        if prefer == "representation":
            entry["resource"] = stored.body
    if stored is None or prefer != "minimal":
        response["outcome"] = operation_outcome(answer.issues)
    entry["response"] = response
    return entry


def entry_issues(answers: list[Answer]) -> list[Issue]:
    """Every entry's issues in one list, each saying which entry it is about."""
    issues = []
    for number, answer in enumerate(answers):
        for issue in answer.issues:
            text = issue.diagnostics
            if not text.startswith(f"entry {number}"):
                text = f"entry {number}: {text}".rstrip(": ")
            issues.append(replace(issue, diagnostics=text))
    return issues


# --- the routes ---------------------------------------------------------------------------------


async def post_base(request: Request) -> Response:
    """`POST /fhir`: a transaction or batch, answered with a transaction-response or
    batch-response."""
    check_format(request)
    principal: Principal = await request.app.state.fhir_auth.principal(request)
    data = await json_body(request)
    return await _transaction_or_batch(request, principal, data)


async def _transaction_or_batch(
    request: Request, principal: Principal, data: dict[str, Any]
) -> Response:
    kind = bundle_kind(data, WITH_REQUEST)
    answers, _ = await store_entries(
        request, principal, bundle_entries(data, kind), kind, clinical_now(request, data)
    )
    prefer = prefer_return(request)
    bundle = {
        "resourceType": "Bundle",
        "type": f"{kind}-response",
        "entry": [response_entry(request, a, prefer) for a in answers],
    }
    return FhirResponse(bundle, 200)


async def post_bundle(request: Request) -> Response:
    """`POST /fhir/Bundle`: a transaction or batch is processed as at `POST /fhir`; any other
    Bundle (a collection, a document, a message) is stored as a Bundle and its entries are
    understood as a batch's. Answered as a create: 201 (200 for the same Bundle again)."""
    check_format(request)
    principal: Principal = await request.app.state.fhir_auth.principal(request)
    data = await json_body(request)
    if data.get("type") in WITH_REQUEST:
        return await _transaction_or_batch(request, principal, data)
    kind = str(bundle_kind(data, KINDS_STORED))
    if not principal.allows("Bundle", "create"):
        raise FhirError(403, "forbidden", "this token does not grant system/Bundle.c")
    shell = _bundle_item(data)
    answers, done = await store_entries(
        request, principal, bundle_entries(data, kind), kind, clinical_now(request, data), (shell,)
    )
    stored = done.resources[shell.number]
    return written(request, stored.resource, stored.created, entry_issues(answers))


KINDS_STORED = ("collection", "document", "message", "history", "searchset")


def _bundle_item(data: dict[str, Any]) -> BundleItem:
    """The Bundle itself, stored as received (its id is the gateway's)."""
    validated({k: v for k, v in data.items() if k != "entry"}, "Bundle")
    digest = content_hash(data)

    def build(own_id: str, _: dict[str, str]) -> EntrySubmission:
        return ResourceDraft("Bundle", data, digest, ResourceIndex(), resource_id=own_id)

    return BundleItem(-1, "Bundle", frozenset(), None, None, frozenset(), lambda _: digest, build)


def include(router: APIRouter) -> None:
    """`POST [base]` and `POST [base]/Bundle` on the FHIR router."""
    for path in ("", "/"):
        router.add_api_route(
            path,
            post_base,
            methods=["POST"],
            tags=["Bundle"],
            name=f"bundle{path.replace('/', '_')}",
            include_in_schema=path != "/",
        )
    add_reads(router, "Bundle")  # a stored collection
    router.add_api_route(
        "/Bundle", post_bundle, methods=["POST"], tags=["Bundle"], name="bundle_store"
    )
