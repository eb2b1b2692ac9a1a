"""The operator console's pages under `/console` (docs/contracts.md §8): sign-in, the HL7
messages, the review queue, patients (with the ANC chart), decisions, tasks, the audit chain.

Routes only translate, as the other edges do: reads through ``RemsReads``, acts (link, discard,
the ``access`` audit record of every view of a patient's data) through ``RemsService``. Nothing
of what a page shows is logged."""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response
from jinja2 import Environment

from gateway.app.audit_trail import read_checkpoint
from gateway.app.errors import NotLinkable, ReviewClosed, UnknownPatient, UnknownReviewItem
from gateway.app.reads import RemsReads
from gateway.app.service import RemsService
from gateway.app.values import REVIEW_KINDS, Replayed, Source
from gateway.config import Settings
from gateway.console import hl7view
from gateway.console.chart import anc_chart
from gateway.console.pages import environment, form, render, safe_next, see_other, stylesheet
from gateway.console.session import (
    COOKIE,
    Session,
    Sessions,
    csrf_ok,
    operator_for,
    sign_in_possible,
)
from gateway.mllp.intake import Hl7Intake
from mappings.hl7v2.senders import SenderDirectory
from mappings.review import review_view
from rems_core.audit import ChainHead
from rems_core.model import Identifier
from rems_core.store.console_repo import DecisionFilter, MessageQuery
from rems_core.store.message_repo import MessageFilter
from rems_core.store.review_repo import ReviewFilter
from rems_core.store.worklist_repo import TaskFilter

log = logging.getLogger("rems_gateway.console")
router = APIRouter(prefix="/console", include_in_schema=False)
CHANNEL = "console"
PAGE_SIZE = 50
DISPOSITIONS = ("accepted", "no_results", "unmatched", "conflict", "ignored")
REVIEW_STATUSES = ("open", "linked", "discarded", "purged", "all")
REPLAYED_TYPE = "ORU^R01"  # the messages a replay processes again (gateway/mllp/intake.py)
TASK_STATUSES = ("requested", "completed", "cancelled", "all")
OUTCOMES = ("authorized", "rationale_required", "denied", "not_applicable")
TASK_KINDS = (
    "psf-due",
    "psf-window-closing",
    "rationale-required",
    "anc-overdue",
    "labs-missed",
    "signature-pending",
    "unmatched-result",
)


class Console:
    """What the console's routes share: the sessions and the templates."""

    def __init__(self, settings: Settings, tz: tzinfo) -> None:
        self.sessions = Sessions(settings.console_session_minutes * 60)
        self.env: Environment = environment(tz)
        self.tz = tz


class SignInNeeded(Exception):
    """No valid session: a page is redirected to the sign-in (303), an action refused (401)."""


def install(app: FastAPI, settings: Settings, tz: tzinfo) -> None:
    """The console on the gateway's app (``gateway/http/app.py``)."""
    app.state.console = Console(settings, tz)
    app.include_router(router)

    async def sign_in_needed(request: Request, _exc: Exception) -> Response:
        if request.method in ("GET", "HEAD"):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return see_other("/console/sign-in?" + _query(next=target))
        page = _console(request)
        return render(page.env, "refused.html", 401, **_bare(), problem="Sign in first.")

    app.add_exception_handler(SignInNeeded, sign_in_needed)


def _console(request: Request) -> Console:
    return request.app.state.console


def _reads(request: Request) -> RemsReads:
    return request.app.state.reads


def _service(request: Request) -> RemsService:
    return request.app.state.service


def _query(**params: Any) -> str:
    return urlencode({k: v for k, v in params.items() if v not in (None, "")})


def signed_in(request: Request) -> Session:
    session = _console(request).sessions.read(request.cookies.get(COOKIE))
    if session is None:
        raise SignInNeeded
    return session


Operator = Annotated[Session, Depends(signed_in)]


def _bare() -> dict[str, Any]:
    return {"session": None, "nav": ""}


def _page(
    request: Request, name: str, session: Session, nav: str, status: int = 200, **ctx: Any
) -> Response:
    return render(_console(request).env, name, status, session=session, nav=nav, **ctx)


def _source(session: Session) -> Source:
    return Source(CHANNEL, session.operator)


async def _checked_form(request: Request, session: Session) -> dict[str, str] | None:
    fields = await form(request)
    return fields if csrf_ok(session, fields.get("csrf")) else None


def _forged(request: Request, session: Session) -> Response:
    return _page(
        request,
        "refused.html",
        session,
        "",
        403,
        problem="This form did not come from your console session (its CSRF token is missing "
        "or wrong): reload the page and try again.",
    )


def _number(page: str) -> int:
    """A page number from a query (anything else is the first page)."""
    return max(int(page), 1) if page.isdigit() and len(page) < 7 else 1


def _offset(page: str) -> int:
    return (_number(page) - 1) * PAGE_SIZE


# --- static and sign-in --------------------------------------------------------------------------


@router.get("/static/console.css")
def console_css() -> Response:
    return stylesheet()


@router.get("")
def console_home() -> Response:
    return see_other("/console/messages")


@router.get("/sign-in")
def sign_in_page(request: Request, next: str | None = None) -> Response:
    settings: Settings = request.app.state.settings
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    possible = sign_in_possible(token, request.app.state.fhir_auth)
    return render(
        _console(request).env,
        "sign_in.html",
        200 if possible else 503,
        **_bare(),
        next=safe_next(next),
        problem=None if possible else _shut(),
    )


def _shut() -> str:
    return (
        "The console is shut: this gateway has no admin token (setting admin_token) and no "
        "SMART client allowed the admin scope."
    )


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    page = _console(request)
    fields = await form(request)
    target = safe_next(fields.get("next"))
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    auth = request.app.state.fhir_auth
    if not sign_in_possible(token, auth):
        return render(page.env, "sign_in.html", 503, **_bare(), next=target, problem=_shut())
    operator = operator_for(fields.get("token", ""), token, auth)
    if operator is None:
        log.warning("console sign-in refused")
        return render(
            page.env,
            "sign_in.html",
            401,
            **_bare(),
            next=target,
            problem="That token does not sign in here: give the admin token or an access "
            "token with the admin scope.",
        )
    _session, cookie = page.sessions.open(operator)
    log.info("console sign-in", extra={"actor": operator})
    response = see_other(target)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=page.sessions.lifetime,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=_secure(request, settings),
    )
    return response


def _secure(request: Request, settings: Settings) -> bool:
    """Secure cookies whenever the console is reached over TLS (here or at a proxy)."""
    public = settings.public_base_url or ""
    return (
        settings.tls_cert is not None
        or public.startswith("https:")
        or (request.url.scheme == "https")
    )


@router.post("/sign-out")
async def sign_out(request: Request, session: Operator) -> Response:
    if await _checked_form(request, session) is None:
        return _forged(request, session)
    _console(request).sessions.close(session)
    log.info("console sign-out", extra={"actor": session.operator})
    response = see_other("/console/sign-in")
    response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")
    return response


# --- messages ------------------------------------------------------------------------------------


def _day(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def _start_of(day: date | None, tz: tzinfo) -> datetime | None:
    return datetime.combine(day, time(), tz).astimezone(UTC) if day else None


@router.get("/messages")
async def messages_page(
    request: Request,
    session: Operator,
    sender: str | None = None,
    type: str | None = None,
    disposition: str | None = None,
    start: Annotated[str | None, Query(alias="from")] = None,
    end: Annotated[str | None, Query(alias="to")] = None,
    page: str = "1",
) -> Response:
    tz = _console(request).tz
    first, last = _day(start), _day(end)
    wanted = MessageQuery(
        sender=sender or None,
        message_type=(type or "").strip() or None,
        disposition=disposition if disposition in DISPOSITIONS else None,
        received_from=_start_of(first, tz),
        received_to=_start_of(last + timedelta(days=1), tz) if last else None,
        count=PAGE_SIZE,
        offset=_offset(page),
    )
    filters = {
        "sender": wanted.sender or "",
        "type": wanted.message_type or "",
        "disposition": wanted.disposition or "",
        "start": first.isoformat() if first else "",
        "end": last.isoformat() if last else "",
    }
    return _listing(
        request,
        session,
        "messages.html",
        page,
        await _reads(request).messages(wanted),
        filters,
        senders=await _reads(request).message_senders(),
        dispositions=DISPOSITIONS,
        bad_dates=bool((start and not first) or (end and not last)),
    )


def _listing(
    request: Request,
    session: Session,
    name: str,
    page: str,
    found: tuple[list[dict[str, Any]], int],
    filters: dict[str, str],
    **ctx: Any,
) -> Response:
    """A page of a listing: its rows, how many in all, which page of how many, its filters."""
    rows, total = found
    pages = max(1, -(-total // PAGE_SIZE))
    nav = name.removesuffix(".html")
    return _page(
        request,
        name,
        session,
        nav,
        rows=rows,
        total=total,
        page=_number(page),
        pages=pages,
        filters=filters,
        **ctx,
    )


@router.get("/messages/{message_id}")
async def message_page(request: Request, message_id: str, session: Operator) -> Response:
    return await _message(request, message_id, session)


async def _message(
    request: Request, message_id: str, session: Session, replayed: Replayed | None = None
) -> Response:
    row = await _reads(request).message(int(message_id)) if message_id.isdigit() else None
    if row is None:
        return _not_found(request, session, "messages", "No stored message has this number.")
    await _service(request).record_access(
        _source(session), f"/console/messages/{row['id']}", row["patient_id"]
    )
    text = hl7view.as_text(row["raw"])
    return _page(
        request,
        "message.html",
        session,
        "messages",
        message=row,
        segments=hl7view.segments(text),
        lines=hl7view.lines(text),
        ack_segments=hl7view.segments(row["ack"] or ""),
        ack_lines=hl7view.lines(row["ack"] or ""),
        replayable=row["message_type"] == REPLAYED_TYPE and bool(row["raw"]),
        replayed=replayed,
    )


@router.post("/messages/{message_id}/replay")
async def replay_message(request: Request, message_id: str, session: Operator) -> Response:
    """The stored ORU processed again under the current configuration, with its original
    arrival time (`rems-gateway replay`, one message): results on file are not stored twice."""
    if await _checked_form(request, session) is None:
        return _forged(request, session)
    row = await _reads(request).message(int(message_id)) if message_id.isdigit() else None
    if row is None:
        return _not_found(request, session, "messages", "No stored message has this number.")
    wanted = MessageFilter(control_ids=(row["control_id"],), sender=row["sender"])
    stored = [m for m in await _reads(request).stored_messages(wanted) if m.row_id == row["id"]]
    if not stored:
        return _not_found(request, session, "messages", "No stored message has this number.")
    settings: Settings = request.app.state.settings
    intake = Hl7Intake(
        _service(request),
        SenderDirectory.load(settings.senders),
        settings.clock,
        settings.processing_id,
    )
    replayed = await intake.replay_stored_message(stored[0], _source(session))
    log.info("console replay", extra={"actor": session.operator, "changed": replayed.changed})
    return await _message(request, message_id, session, replayed)


def _not_found(request: Request, session: Session, nav: str, problem: str) -> Response:
    return _page(request, "refused.html", session, nav, 404, problem=problem)


# --- the review queue ----------------------------------------------------------------------------


@router.get("/review")
async def review_page(
    request: Request,
    session: Operator,
    kind: str | None = None,
    status: str = "open",
    sender: str | None = None,
    page: str = "1",
) -> Response:
    status = status if status in REVIEW_STATUSES else "open"
    kind = kind if kind in REVIEW_KINDS else None
    wanted = ReviewFilter(
        None if status == "all" else status,
        kind,
        sender or None,
        None,
        PAGE_SIZE,
        _offset(page),
    )
    items, total = await _reads(request).review_items(wanted)
    now = datetime.now(UTC)
    return _listing(
        request,
        session,
        "review.html",
        page,
        ([review_view(i, now) for i in items], total),
        {"kind": kind or "", "status": status, "sender": sender or ""},
        kinds=REVIEW_KINDS,
        statuses=REVIEW_STATUSES,
    )


def _subject(item: dict[str, Any]) -> str | None:
    """The patient a review item is of, when it names one."""
    if item.get("patient_id"):
        return item["patient_id"]
    named = item.get("patients") or []
    return named[0] if len(named) == 1 else None


@router.get("/review/{item_id}")
async def review_item_page(
    request: Request, item_id: str, session: Operator, done: str | None = None
) -> Response:
    return await _review_item(request, item_id, session, done=done)


async def _review_item(
    request: Request,
    item_id: str,
    session: Session,
    status: int = 200,
    problem: str | None = None,
    done: str | None = None,
) -> Response:
    item = await _reads(request).review_item(item_id)
    if item is None:
        return _not_found(request, session, "review", "No review item has this id.")
    await _service(request).record_access(
        _source(session), f"/console/review/{item['id']}", _subject(item)
    )
    view = review_view(item, datetime.now(UTC), reveal=True)
    message = await _reads(request).message_number(item["message"]) if item["message"] else None
    choices = [
        f"{c['system']}|{c['value']}"
        for c in view["candidates"]
        if c["system"] and c["rule"] != "reference"
    ]
    return _page(
        request,
        "review_item.html",
        session,
        "review",
        status,
        item=view,
        linkable=item["status"] == "open" and item["kind"] in ("unmatched", "ambiguous"),
        choices=choices,
        message_number=message,
        problem=problem,
        done=done if done in ("linked", "discarded") else None,
    )


@router.post("/review/{item_id}/link")
async def link_item(request: Request, item_id: str, session: Operator) -> Response:
    fields = await _checked_form(request, session)
    if fields is None:
        return _forged(request, session)
    patient = fields.get("patient", "").strip()
    chosen = fields.get("identifier", "")
    system, _, value = chosen.partition("|")
    identifier = Identifier(system, value) if system and value else None
    if not patient:
        return await _review_item(request, item_id, session, 422, "Name the REMS patient id.")
    try:
        await _service(request).link_review(
            item_id, patient, identifier, _source(session), datetime.now(UTC)
        )
    except (UnknownReviewItem, ReviewClosed, UnknownPatient, NotLinkable) as exc:
        return await _review_item(request, item_id, session, *_refusal(exc))
    return see_other(f"/console/review/{item_id}?done=linked")


@router.post("/review/{item_id}/discard")
async def discard_item(request: Request, item_id: str, session: Operator) -> Response:
    fields = await _checked_form(request, session)
    if fields is None:
        return _forged(request, session)
    reason = fields.get("reason", "").strip()
    if not reason:
        return await _review_item(request, item_id, session, 422, "A discard needs a reason.")
    try:
        await _service(request).discard_review(item_id, reason, _source(session), datetime.now(UTC))
    except (UnknownReviewItem, ReviewClosed, NotLinkable) as exc:
        return await _review_item(request, item_id, session, *_refusal(exc))
    return see_other(f"/console/review/{item_id}?done=discarded")


def _refusal(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, UnknownReviewItem):
        return 404, "No review item has this id."
    if isinstance(exc, ReviewClosed):
        return 409, f"The item is {exc.status} already."
    if isinstance(exc, UnknownPatient):
        return 422, "No registry patient has this REMS id."
    return 422, str(exc)


# --- patients ------------------------------------------------------------------------------------


@router.get("/patients")
async def patients_page(request: Request, session: Operator) -> Response:
    return _page(request, "patients.html", session, "patients", identifier="", found=[])


@router.post("/patients")
async def find_patient(request: Request, session: Operator) -> Response:
    """Posted, not a query: an identifier in a URL would stay in browser histories and in
    the logs of proxies between the operator and the gateway."""
    fields = await _checked_form(request, session)
    if fields is None:
        return _forged(request, session)
    wanted = fields.get("identifier", "").strip()
    found: list[str] = []
    if wanted:
        system, _, value = wanted.rpartition("|")
        found = await _reads(request).patients_with_value(value, system or None)
        if not found and await _reads(request).patient_exists(wanted):
            found = [wanted]  # a REMS patient id
        if len(found) == 1:
            return see_other(f"/console/patients/{found[0]}")
    return _page(request, "patients.html", session, "patients", identifier=wanted, found=found)


@router.get("/patients/{patient_id}")
async def patient_page(request: Request, patient_id: str, session: Operator) -> Response:
    reads = _reads(request)
    view = await reads.patient_view(patient_id, datetime.now(UTC))
    if view is None:
        return _not_found(request, session, "patients", "No registry patient has this REMS id.")
    await _service(request).record_access(
        _source(session), f"/console/patients/{patient_id}", patient_id
    )
    chart = anc_chart(
        reads.ctx.lab_pack(),
        view.patient.designation,
        view.ancs,
        view.psfs,
        view.decisions,
        _console(request).tz,
    )
    return _page(request, "patient.html", session, "patients", view=view, chart=chart)


# --- decisions, tasks, audit ---------------------------------------------------------------------


@router.get("/decisions")
async def decisions_page(
    request: Request,
    session: Operator,
    outcome: str | None = None,
    patient: str | None = None,
    page: str = "1",
) -> Response:
    wanted = DecisionFilter(
        patient_id=(patient or "").strip() or None,
        outcome=outcome if outcome in OUTCOMES else None,
        count=PAGE_SIZE,
        offset=_offset(page),
    )
    filters = {"outcome": wanted.outcome or "", "patient": wanted.patient_id or ""}
    found = await _reads(request).decisions(wanted)
    return _listing(request, session, "decisions.html", page, found, filters, outcomes=OUTCOMES)


@router.get("/tasks")
async def tasks_page(
    request: Request,
    session: Operator,
    status: str = "requested",
    kind: str | None = None,
    patient: str | None = None,
    owner: str | None = None,
    page: str = "1",
) -> Response:
    status = status if status in TASK_STATUSES else "requested"
    wanted = TaskFilter(
        patient_id=(patient or "").strip() or None,
        owner_npi=(owner or "").strip() or None,
        status=None if status == "all" else status,
        kind=kind if kind in TASK_KINDS else None,
        count=PAGE_SIZE,
        offset=_offset(page),
    )
    filters = {
        "status": status,
        "kind": wanted.kind or "",
        "patient": wanted.patient_id or "",
        "owner": wanted.owner_npi or "",
    }
    found = await _reads(request).task_rows(wanted)
    return _listing(
        request,
        session,
        "tasks.html",
        page,
        found,
        filters,
        statuses=TASK_STATUSES,
        kinds=TASK_KINDS,
    )


@router.get("/audit")
async def audit_page(request: Request, session: Operator) -> Response:
    settings: Settings = request.app.state.settings
    checkpoint, written, problem = _checkpoint(settings.audit_checkpoint)
    state = await _reads(request).audit_state(checkpoint)
    return _page(
        request,
        "audit.html",
        session,
        "audit",
        state=state,
        checkpoint_file=settings.audit_checkpoint is not None,
        checkpoint_written=written,
        checkpoint_problem=problem,
    )


def _checkpoint(path: Path | None) -> tuple[ChainHead | None, str | None, str | None]:
    """The checkpoint file's head and when it was written, or why it cannot be read."""
    if path is None:
        return None, None, None
    try:
        head = read_checkpoint(path)
        written = json.loads(path.read_text(encoding="utf-8")).get("written_at")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, None, f"the checkpoint file cannot be read ({type(exc).__name__})"
    return head, str(written) if written else None, None


@router.get("/{unknown:path}")
def unknown_page(unknown: str, request: Request) -> Response:
    """Any other path under /console: a page of its own (with the console's headers)."""
    session = _console(request).sessions.read(request.cookies.get(COOKIE))
    return render(
        _console(request).env,
        "refused.html",
        404,
        session=session,
        nav="",
        problem="The console has no such page.",
    )
