"""ACK messages (docs/contracts.md §4): MSA with the original control id, one ERR per problem.

v2.5 and later: ERR-2 location, ERR-3 HL7 table 0357, ERR-4 severity, ERR-5 our code, ERR-8 text.
Older versions: ERR-1 (location with the 0357 code) and MSA-3 text. Enhanced mode (MSH-15/16
present) answers an accept acknowledgment (CA/CE/CR) as MSH-15 asks (AL, NE, ER, SU). In
original mode a sender's engine may want other MSA-1 codes: ``msa_code`` maps ours to its.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime

from mappings.hl7v2.oru import Hl7Problem
from mappings.hl7v2.tokenizer import Segment

TABLE_0357 = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}
ACCEPT_CODE = {"AA": "CA", "AE": "CE", "AR": "CR"}
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))


_SPECIAL = re.compile(r"[\\|^&~\x00-\x1f\x7f]")
#: Control characters (0x0B and 0x1C frame MLLP, CR ends a segment) never reach an ACK.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x0c\x0e-\x1f\x7f]")


def escape(text: str) -> str:
    """One echoed value for the ACK: delimiters escaped, CR and LF a space, other controls gone."""
    if not _SPECIAL.search(text):
        return text  # most values: nothing to escape
    for raw, escaped in _ESCAPES:
        text = text.replace(raw, escaped)
    return _CONTROL.sub("", text).replace("\r", " ").replace("\n", " ")


def version_at_least_2_5(version: str) -> bool:
    """Whether MSH-12 is 2.5 or later; a part of more than 4 digits is no version number."""
    parts = version.split(".")[:2]
    if any(len(p) > 4 for p in parts):
        return False
    return tuple(int(p) for p in parts if p.isdecimal()) >= (2, 5)


def enhanced_mode(msh: Segment) -> bool:
    return bool(msh.get(15, 1) or msh.get(16, 1))


def accept_ack_type(msh: Segment) -> str:
    """MSH-15 (HL7 table 0155: AL, NE, ER, SU) of a message in enhanced mode; empty is AL."""
    return (msh.get(15, 1) or "AL").upper()


def wanted(msh: Segment, code: str) -> bool:
    """Whether the sender asked for this acknowledgment (MSH-15 accept ack type, table 0155)."""
    if not enhanced_mode(msh):
        return True
    policy = accept_ack_type(msh)
    return {"AL": True, "NE": False, "ER": code != "AA", "SU": code == "AA"}.get(policy, True)


def build_ack(
    msh: Segment | None,
    code: str,
    problems: Sequence[Hl7Problem],
    ack_control_id: str,
    now: datetime,
    text: str = "",
    msa_code: Callable[[str], str] | None = None,
) -> str:
    """The ACK text (segments separated by \\r). ``msh`` may be None for an unreadable message.
    ``msa_code`` turns our AA/AE/AR into the sender's MSA-1 (original mode only)."""
    version = (msh.get(12, 1) if msh is not None else "") or "2.5.1"
    event = escape(msh.get(9, 2)) if msh is not None else ""
    if msh is not None and enhanced_mode(msh):
        msa_1 = ACCEPT_CODE[code]  # enhanced mode is the standard's own: never remapped
    else:
        msa_1 = msa_code(code) if msa_code is not None else code
    header = answer_header(msh, f"ACK^{event}^ACK" if event else "ACK", ack_control_id, now)
    modern = version_at_least_2_5(version)
    msa = ["MSA", msa_1, escape(msh.get(10, 1)) if msh is not None else ""]
    if not modern and (text or problems):
        msa.append(escape(text or coded_text(problems[0])))
    segments = [header, "|".join(msa).rstrip("|")]
    segments += [err_segment(problem, modern) for problem in problems]
    return "\r".join(segments) + "\r"


def answer_header(msh: Segment | None, message_type: str, control_id: str, now: datetime) -> str:
    """The MSH of an answer: sender and receiver swapped, MSH-11 and MSH-12 echoed (escaped)."""
    field = (lambda n: escape(msh.get(n, 1))) if msh is not None else (lambda n: "")
    version = (msh.get(12, 1) if msh is not None else "") or "2.5.1"
    return "|".join(
        [
            "MSH",
            "^~\\&",
            field(5),
            field(6),
            field(3),
            field(4),
            now.strftime("%Y%m%d%H%M%S%z"),
            "",
            message_type,
            escape(control_id),
            field(11) or "P",
            escape(version),
        ]
    )


def coded_text(problem: Hl7Problem) -> str:
    """MSA-3 of an ACK before v2.5: the first finding, our code first."""
    return f"{problem.code}: {problem.text}" if problem.code else problem.text


def finding_codes(ack: str) -> list[str]:
    """Our codes in an ACK this module built: ERR-5 from v2.5, ERR-1's alternate identifier
    before (for tools that read ACKs, such as the scenario runner)."""
    codes = []
    for segment in ack.split("\r"):
        fields = segment.split("|")
        if fields[0] != "ERR":
            continue
        if len(fields) > 5 and fields[5]:
            codes.append(fields[5].split("^")[0])
        elif len(fields) > 1:
            code = fields[1].split("^")[-1].split("&")
            if len(code) > 5 and code[5] == "L" and code[3]:
                codes.append(code[3])
    return codes


def err_segment(problem: Hl7Problem, modern: bool) -> str:
    description = TABLE_0357.get(problem.hl7_code, "")
    if not modern:  # ERR-1 ELD-4 (CE): the 0357 code, with ours as its alternate identifier
        ours = f"&{escape(problem.code)}&&L" if problem.code else ""
        return f"ERR|{problem.location}^{problem.hl7_code}&{escape(description)}&HL70357{ours}"
    return "|".join(
        [
            "ERR",
            "",
            problem.location,
            f"{problem.hl7_code}^{escape(description)}^HL70357",
            problem.severity,
            f"{escape(problem.code)}^^L" if problem.code else "",
            "",
            "",
            escape(problem.text),
        ]
    )
