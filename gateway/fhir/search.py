"""Search parameters shared by the resources: which a search takes (an unknown one is refused
unless `Prefer: handling=lenient`), dates with prefixes, tokens, paging."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from fastapi import Request

from gateway.fhir.http import FhirError, prefer_lenient

MAX_COUNT = 1000
DEFAULT_COUNT = 50
PREFIXES = ("eq", "ge", "gt", "le", "lt")
PAGING = ("_count", "_offset")
GENERAL = ("_format",)  # taken by every interaction, search or not
SHOWN_NAMES = 5  # unknown parameters named in the refusal, at most
SHOWN_LENGTH = 64  # characters of each


def search_parameters(request: Request, accepted: Iterable[str]) -> list[tuple[str, str]]:
    """The request's query parameters that this search takes (``accepted``, with modifiers
    written out: `patient:identifier`; and `_format`), in order. Any other parameter is 400
    naming it (FHIR's rule for a server that does not support it), unless the client sent
    `Prefer: handling=lenient`: then it is ignored, and left out of the Bundle's self link."""
    known = {*accepted, *GENERAL}
    used: list[tuple[str, str]] = []
    unknown: list[str] = []
    for name, value in request.query_params.multi_items():
        if name in known:
            used.append((name, value))
        elif name not in unknown:
            unknown.append(name)
    if unknown and not prefer_lenient(request):
        shown = [name[:SHOWN_LENGTH] for name in unknown[:SHOWN_NAMES]]
        more = f" (and {len(unknown) - SHOWN_NAMES} more)" if len(unknown) > SHOWN_NAMES else ""
        takes = ", ".join(sorted(set(accepted))) or "no parameters"
        noun = "parameter" if len(unknown) == 1 else "parameters"
        raise FhirError(
            400,
            "not-supported",
            f"unknown search {noun} {', '.join(shown)}{more}: this search takes {takes} "
            "(send Prefer: handling=lenient to have unknown parameters ignored)",
            tuple(shown),
        )
    return used


def date_range(values: list[str]) -> tuple[datetime | None, datetime | None]:
    """`date` parameters (all must hold) → [start, before); a date is the whole day (UTC)."""
    start: datetime | None = None
    before: datetime | None = None
    for value in values:
        prefix = value[:2] if value[:2] in PREFIXES else "eq"
        low, high = _period(value[2:] if value[:2] in PREFIXES else value)
        if prefix in ("eq", "ge", "gt"):
            bound = high if prefix == "gt" else low
            start = bound if start is None else max(start, bound)
        if prefix in ("eq", "le", "lt"):
            bound = low if prefix == "lt" else high
            before = bound if before is None else min(before, bound)
    return start, before


def _period(text: str) -> tuple[datetime, datetime]:
    try:
        if len(text) == 10:
            day = datetime.fromisoformat(text).replace(tzinfo=UTC)
            return day, day + timedelta(days=1)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FhirError(
            400, "value", "date must be YYYY-MM-DD or a time with offset", ("date",)
        ) from None
    if moment.tzinfo is None:
        raise FhirError(400, "value", "a date parameter with a time needs a UTC offset", ("date",))
    moment = moment.astimezone(UTC)
    return moment, moment + timedelta(microseconds=1)


MAX_INT = 2**31 - 1  # the store's integer columns: beyond, no version or offset exists


def identifier_param(value: str) -> tuple[str, str]:
    system, bar, code = value.partition("|")
    if not bar or not code:
        raise FhirError(400, "value", "an identifier parameter is system|value", ("identifier",))
    return system, code


def page(count: int | None, offset: int | None) -> tuple[int, int]:
    if (count is not None and count < 0) or (offset is not None and offset < 0):
        raise FhirError(400, "value", "_count and _offset cannot be negative")
    if offset is not None and offset > MAX_INT:
        raise FhirError(400, "value", f"_offset cannot be above {MAX_INT}", ("_offset",))
    return min(count if count is not None else DEFAULT_COUNT, MAX_COUNT), offset or 0
