"""Mutated HL7 v2 messages for the intake's property tests and the longer fuzz run (issue 11).

Starting from a real ORU, each example applies one to three mutations that real feeds and attackers
produce: delimiters, control characters and MLLP bytes in fields, long runs, odd numbers and
times, repeated or dropped segments, and MSH-15/16 asking for no acknowledgment.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import strategies as st

ORU = (Path(__file__).parents[2] / "fixtures" / "hl7" / "oru-v251-loinc-anc.hl7").read_bytes()
SEGMENTS = [s for s in ORU.split(b"\r") if s]

HOSTILE_BYTES = b"|^~\\&\r\n\x00\x0b\x1c\x0d\x7f\xff0123456789.+-eE "
NUMBERS = [b"1e40", b"999999999999999999999", b"-0", b"NaN", b"Infinity", b"0x10", b"1e-40"]
TIMES = [b"20211201081500+2500", b"99991231235959.9999-1200", b"00010101+1400", b"2021", b"x"]
ACK_TYPES = [b"AL", b"NE", b"ER", b"SU", b""]

RUNS = [HOSTILE_BYTES[i : i + 1] * 3 for i in range(len(HOSTILE_BYTES))]
# mostly ASCII: arbitrary bytes rarely decode (MSH-18 empty is ASCII), so they test little more
hostile = st.lists(st.sampled_from([HOSTILE_BYTES[i : i + 1] for i in range(18)]), max_size=40)
text = (
    hostile.map(b"".join)
    | st.sampled_from([*NUMBERS, *TIMES, *RUNS])
    | st.text(max_size=20).map(str.encode)
    | st.binary(max_size=40)
)


@st.composite
def field_change(draw: st.DrawFn, segments: list[bytes]) -> list[bytes]:
    """One field of one segment set to hostile text (MSH-1 and MSH-2 left alone)."""
    index = draw(st.sampled_from([0, 0, *range(len(segments))]))  # MSH is what ACKs echo
    fields = segments[index].split(b"|")
    n = draw(st.integers(1, max(len(fields), 20)))
    fields += [b""] * (n + 1 - len(fields))
    if index == 0 and n == 1:
        n = 2
    fields[n] = draw(text) * draw(st.sampled_from([1, 1, 1, 50, 3000]))
    return [*segments[:index], b"|".join(fields), *segments[index + 1 :]]


@st.composite
def segment_change(draw: st.DrawFn, segments: list[bytes]) -> list[bytes]:
    """A segment (never MSH) dropped, repeated, or a new one inserted."""
    index = draw(st.integers(1, len(segments) - 1))
    kind = draw(st.sampled_from(["drop", "repeat", "repeat", "insert"]))
    if kind == "drop":
        return [*segments[:index], *segments[index + 1 :]]
    if kind == "repeat":
        return [*segments[: index + 1], segments[index], *segments[index + 1 :]]
    return [*segments[:index], draw(text), *segments[index:]]


@st.composite
def acknowledgment_asked(draw: st.DrawFn, segments: list[bytes]) -> list[bytes]:
    """MSH-15 (accept ack type) and MSH-16 set: enhanced mode."""
    fields = segments[0].split(b"|")
    fields += [b""] * (17 - len(fields))
    fields[14], fields[15] = draw(st.sampled_from(ACK_TYPES)), draw(st.sampled_from(ACK_TYPES))
    return [b"|".join(fields), *segments[1:]]


@st.composite
def mutated_messages(draw: st.DrawFn, enhanced: bool = True) -> bytes:
    """The ORU after 1–3 mutations; ``enhanced`` False: MSH-15/16 are left alone."""
    changes = [field_change, segment_change, *([acknowledgment_asked] if enhanced else [])]
    segments = list(SEGMENTS)
    for _ in range(draw(st.integers(1, 3))):
        segments = draw(draw(st.sampled_from(changes))(segments))
    return b"\r".join(segments) + draw(st.sampled_from([b"\r", b"", b"\r\n", b"\n"]))


def msh_15(message: bytes) -> bytes:
    """MSH-15 as the raw bytes say (the oracle does not use the tokenizer), b"" when absent."""
    first = message.replace(b"\n", b"\r").split(b"\r", 1)[0]
    fields = first.split(b"|")
    return fields[14] if first.startswith(b"MSH|") and len(fields) > 14 else b""


def msh_16(message: bytes) -> bytes:
    first = message.replace(b"\n", b"\r").split(b"\r", 1)[0]
    fields = first.split(b"|")
    return fields[15] if first.startswith(b"MSH|") and len(fields) > 15 else b""
