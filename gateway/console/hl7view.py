"""A stored HL7 v2 message (or ACK) as the console shows it: its segments, each field numbered
as HL7 numbers them (MSH-1 is the field separator, MSH-2 the encoding characters). Shown as
text, never interpreted: this is what the sender sent, byte for byte, decoded for reading."""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINES = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Field:
    position: str  # e.g. "PID-3"
    value: str


@dataclass(frozen=True)
class Segment:
    name: str
    fields: list[Field]  # the non-empty ones


def as_text(raw: bytes | memoryview | str) -> str:
    """The message decoded for reading (UTF-8, a leading byte order mark dropped, bytes that do
    not decode shown as U+FFFD)."""
    text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8", errors="replace")
    return text.removeprefix("\ufeff")


def segments(text: str) -> list[Segment]:
    separator = text[3] if text.startswith("MSH") and len(text) > 3 else "|"
    found = []
    for line in _LINES.split(text):
        if not line.strip():
            continue
        parts = line.split(separator)
        name = parts[0]
        # in MSH (and FHS, BHS) the separator itself is field 1
        values = [separator, *parts[1:]] if name in ("MSH", "FHS", "BHS") else parts[1:]
        fields = [Field(f"{name}-{n}", v) for n, v in enumerate(values, start=1) if v != ""]
        found.append(Segment(name, fields))
    return found


def lines(text: str) -> list[str]:
    """The segments one per line (the stored text ends each with a carriage return)."""
    return [line for line in _LINES.split(text) if line]
