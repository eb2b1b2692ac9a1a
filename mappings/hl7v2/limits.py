"""What a message may hold before it is read (issue 11): sizes, NUL bytes, the header's time.

One pass over the tokenized message, linear in its size. The first finding is an ``AE`` whose ERR
names the field and, for a limit, the setting (docs/contracts.md §4).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC

from mappings.hl7v2.oru import Hl7Problem, hl7_time
from mappings.hl7v2.senders import Hl7Limits
from mappings.hl7v2.tokenizer import HEADER_SEGMENTS, Message, Segment

#: Fields whose first component (or SPM-2's first two) becomes a stored key.
KEY_FIELDS = {"MSH": (3, 4, 10), "OBR": (2, 3), "SPM": (2,)}
#: Fields bounded by the frame only: an OBX-5 may be an encapsulated report.
UNBOUNDED_FIELDS = {("OBX", 5)}


def message_problem(message: Message, limits: Hl7Limits) -> Hl7Problem | None:
    """The first reason this message cannot be read as it is, or None."""
    if len(message.segments) > limits.max_segments:
        text = f"the message has more than max_segments {limits.max_segments} segments"
        return _error("", "100", "TOO_MANY_SEGMENTS", text)
    for location, segment in _numbered(message):
        problem = _segment_problem(location, segment, message.encoding.repetition, limits)
        if problem is not None:
            return problem
    return _header_time_problem(message.msh)


def _numbered(message: Message) -> Iterator[tuple[str, Segment]]:
    """Each segment with its ERR-2 location prefix, e.g. "OBX^3" for the third OBX."""
    seen: dict[str, int] = {}
    for segment in message.segments:
        seen[segment.name] = seen.get(segment.name, 0) + 1
        yield f"{segment.name}^{seen[segment.name]}", segment


def _segment_problem(
    location: str, segment: Segment, repetition: str, limits: Hl7Limits
) -> Hl7Problem | None:
    fields = segment.raw_fields()
    if not _within_at_a_glance(fields, repetition, limits):
        problem = _field_problem(location, segment, fields, repetition, limits)
        if problem is not None:
            return problem
    return _key_problem(location, segment, limits.max_key_length)


def _within_at_a_glance(fields: list[str], repetition: str, limits: Hl7Limits) -> bool:
    """Whole-segment checks that clear nearly every segment without a look at each field (no
    NUL, no field too long, fewer repetition marks in all than one field may hold)."""
    text = "".join(fields)
    return (
        "\x00" not in text
        and text.count(repetition) < limits.max_repetitions
        and max(map(len, fields), default=0) <= limits.max_field_length
    )


def _field_problem(
    location: str, segment: Segment, fields: list[str], repetition: str, limits: Hl7Limits
) -> Hl7Problem | None:
    header = segment.name in HEADER_SEGMENTS
    for n, raw in enumerate(fields, start=1):
        where, label = f"{location}^{n}", f"{segment.name}-{n}"
        if "\x00" in raw:
            return _error(where, "102", "NUL_CHARACTER", f"{label} holds a NUL character")
        if len(raw) > limits.max_field_length and (segment.name, n) not in UNBOUNDED_FIELDS:
            text = f"{label} is longer than max_field_length {limits.max_field_length}"
            return _error(where, "102", "FIELD_TOO_LONG", text)
        if not (header and n <= 2) and raw.count(repetition) >= limits.max_repetitions:
            text = f"{label} has more than max_repetitions {limits.max_repetitions} repetitions"
            return _error(where, "102", "TOO_MANY_REPETITIONS", text)
    return None


def _key_problem(location: str, segment: Segment, longest: int) -> Hl7Problem | None:
    keys = [(n, segment.get(n, c)) for n in KEY_FIELDS.get(segment.name, ()) for c in (1, 2)]
    if segment.name == "PID":
        keys += [(3, repetition[0][0]) for repetition in segment.field(3) if repetition]
    for n, value in keys:
        if len(value) > longest:
            text = f"{segment.name}-{n} is longer than max_key_length {longest}"
            return _error(f"{location}^{n}", "102", "VALUE_TOO_LONG", text)
    return None


def _header_time_problem(msh: Segment) -> Hl7Problem | None:
    """MSH-7, when present, must be a time (a resend's MSH-7 may differ; it is never a key)."""
    sent = msh.get(7, 1)
    if sent and hl7_time(sent, UTC) is None:
        text = "MSH-7 (date/time of message) is not a readable HL7 time"
        return _error("MSH^1^7", "102", "", text)
    return None


def _error(location: str, hl7_code: str, code: str, text: str) -> Hl7Problem:
    return Hl7Problem(location, hl7_code, "E", code, text)
