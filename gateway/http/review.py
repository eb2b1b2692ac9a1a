"""The review queue over HTTP (admin scope, docs/contracts.md §4): `GET /admin/review` lists what
the gateway holds for a person, `GET /admin/review/{id}` shows one item, `POST …/link` files it
to a registry patient and `POST …/discard` records why it is nobody's."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.app.errors import NotLinkable, ReviewClosed, UnknownPatient, UnknownReviewItem
from gateway.app.reads import RemsReads
from gateway.app.service import RemsService
from gateway.app.values import REVIEW_KINDS, Source
from gateway.http.admin import require_admin
from gateway.http.errors import ApiError, error_responses
from mappings.review import review_view
from rems_core.model import Identifier
from rems_core.store.review_repo import ReviewFilter

router = APIRouter(
    prefix="/admin/review",
    tags=["admin"],
    responses=error_responses(400, 401, 403, 404, 409, 422, 500, 503),
)
STATUSES = ("open", "linked", "discarded", "purged", "all")
_AGE = re.compile(r"^(\d{1,5})([dh])$")


def parse_age(age: str) -> timedelta:
    """`7d` or `36h`: how old an item must at least be."""
    match = _AGE.match(age.strip())
    if match is None:
        raise ValueError("an age is a number of days or hours, e.g. 7d or 36h")
    amount, unit = int(match.group(1)), match.group(2)
    return timedelta(days=amount) if unit == "d" else timedelta(hours=amount)


def review_filter(
    kind: str | None, sender: str | None, age: str | None, status: str, count: int, offset: int
) -> ReviewFilter:
    """The filter of a listing; ValueError names what cannot be used."""
    if kind is not None and kind not in REVIEW_KINDS:
        raise ValueError(f"kind is one of {', '.join(REVIEW_KINDS)}")
    if status not in STATUSES:
        raise ValueError(f"status is one of {', '.join(STATUSES)}")
    before = datetime.now(UTC) - parse_age(age) if age else None
    return ReviewFilter(None if status == "all" else status, kind, sender, before, count, offset)


def _reads(request: Request) -> RemsReads:
    return request.app.state.reads


def _service(request: Request) -> RemsService:
    return request.app.state.service


@router.get("")
async def list_review(
    request: Request,
    _: Annotated[str, Depends(require_admin)],
    kind: str | None = None,
    sender: str | None = None,
    age: Annotated[str | None, Query(description="at least this old: 7d, 36h")] = None,
    status: str = "open",
    reveal: bool = False,
    count: Annotated[int, Query(alias="_count", ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(alias="_offset", ge=0, le=2**31 - 1)] = 0,
) -> dict[str, Any]:
    """What the gateway holds for review (oldest first): results of no patient or of two,
    reused control ids, merges of two registry patients. Identifier values are masked unless
    `reveal=true`."""
    try:
        wanted = review_filter(kind, sender, age, status, count, offset)
    except ValueError as exc:
        raise ApiError(400, "invalid_filter", str(exc)) from None
    items, total = await _reads(request).review_items(wanted)
    now = datetime.now(UTC)
    return {"total": total, "items": [review_view(i, now, reveal) for i in items]}


@router.get("/{item_id}")
async def show_review(
    request: Request, item_id: str, _: Annotated[str, Depends(require_admin)], reveal: bool = False
) -> dict[str, Any]:
    item = await _reads(request).review_item(item_id)
    if item is None:
        raise ApiError(404, "unknown_review_item", "no review item has this id")
    return review_view(item, datetime.now(UTC), reveal)


class IdentifierIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    system: str = Field(min_length=1)
    value: str = Field(min_length=1)


class LinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patient: str = Field(min_length=1, description="the REMS patient id")
    identifier: IdentifierIn | None = Field(
        None, description="the identifier to attach (default: every one the item resolved)"
    )


class DiscardIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1)


@router.post("/{item_id}/link")
async def link_review(
    request: Request, item_id: str, body: LinkIn, actor: Annotated[str, Depends(require_admin)]
) -> dict[str, Any]:
    """Attach the item's identifier to a registry patient (later messages match) and file every
    result held for it, in clinical order."""
    given = body.identifier
    identifier = Identifier(given.system, given.value) if given else None
    try:
        linked = await _service(request).link_review(
            item_id, body.patient, identifier, Source("admin", actor), datetime.now(UTC)
        )
    except (UnknownReviewItem, ReviewClosed, UnknownPatient, NotLinkable) as exc:
        raise refused(exc) from None
    return {
        "item": item_id,
        "patient": linked.patient_id,
        "identifiers_added": len(linked.attached.added),
        "identifiers_of_another_patient": len(linked.attached.taken),
        "filed": linked.attached.filed,
    }


@router.post("/{item_id}/discard")
async def discard_review(
    request: Request, item_id: str, body: DiscardIn, actor: Annotated[str, Depends(require_admin)]
) -> dict[str, Any]:
    try:
        await _service(request).discard_review(
            item_id, body.reason, Source("admin", actor), datetime.now(UTC)
        )
    except (UnknownReviewItem, ReviewClosed, NotLinkable) as exc:
        raise refused(exc) from None
    return {"item": item_id, "status": "discarded"}


def refused(exc: Exception) -> ApiError:
    """The service's refusals of a link or discard, for HTTP and the command line alike."""
    if isinstance(exc, UnknownReviewItem):
        return ApiError(404, "unknown_review_item", "no review item has this id")
    if isinstance(exc, ReviewClosed):
        return ApiError(409, "review_closed", f"the item is {exc.status} already")
    if isinstance(exc, UnknownPatient):
        return ApiError(422, "unknown_patient", "no registry patient has this REMS id")
    return ApiError(422, "not_linkable", str(exc))
