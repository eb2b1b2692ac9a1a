"""ORU^R01 (v2.3–v2.8) → the lab results the REMS rules read (docs/contracts.md §4).

Only ANC and derivation inputs are taken (by LOINC in OBX-3 or its alternate triplet, or the
sender's local code); every other OBX is ignored. Values stay text: the rules read them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

from mappings.hl7v2.senders import DrawTimeField, SenderConfig
from mappings.hl7v2.tokenizer import FieldValues, Message, Segment
from rems_core.anc import code_text_mismatch, is_known_unit, relevant_codes
from rems_core.identity import Candidate, Rule, resolved
from rems_core.model import Identifier, LabResult, ResultStatus
from rems_core.rulepack import RulePack

#: OBX-3.3 (or .6) naming LOINC: HL7 table 0396's LN, the spelled-out name, FHIR's URI, LOINC's
#: OID, and pCLOCD (the pan-Canadian LOINC observation code database, LOINC codes in Canada).
LOINC_SYSTEMS = {"LN", "LOINC", "http://loinc.org", "2.16.840.1.113883.6.1", "pCLOCD"}
#: OBX-11 observation result status (HL7 table 0085) → how the rules treat it.
RESULT_STATUS = {
    "F": ResultStatus.FINAL,
    "C": ResultStatus.CORRECTED,
    "P": ResultStatus.PRELIMINARY,
    "R": ResultStatus.PRELIMINARY,
    "S": ResultStatus.PRELIMINARY,
    "I": ResultStatus.PRELIMINARY,
    "X": ResultStatus.CANCELLED,
    "D": ResultStatus.CANCELLED,
    "W": ResultStatus.CANCELLED,
}
_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$")


@dataclass(frozen=True)
class Hl7Problem:
    """One ERR segment: where, the HL7 table 0357 code, severity, our code and the reason."""

    location: str  # e.g. "OBX^2^5" (segment, its sequence, field)
    hl7_code: str  # "100" segment sequence, "101" required field missing, "102" data type, …
    severity: str  # "W" warning (the message is still accepted) or "E" error
    code: str  # ERR-5, ours
    text: str


@dataclass(frozen=True)
class LabReport:
    identifiers: list[Identifier]
    results: list[LabResult]
    locations: list[str]  # the OBX of each result, e.g. "OBX^3"
    problems: list[Hl7Problem] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)  # identifiers: the resolved ones


def hl7_time(text: str, tz: tzinfo) -> datetime | None:
    """An HL7 TS/DTM (YYYY[MM[DD[HH[MM[SS[.S]]]]]][±ZZZZ]); without an offset, in ``tz``.
    None when it is no such time: a day, hour or offset out of range, or beyond the calendar."""
    match = _TS.match(text.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        moment = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")[:6]),
        )
        zone = _offset(offset) if offset else tz
        return moment.replace(tzinfo=zone).astimezone(UTC)
    except (ValueError, OverflowError):  # e.g. +2500, or 9999-12-31 23:59 -1200 (year 10000)
        return None


def _offset(offset: str) -> timezone:
    hours, minutes = int(offset[1:3]), int(offset[3:5])
    if hours > 23 or minutes > 59:
        raise ValueError("a UTC offset is at most ±23:59")
    sign = 1 if offset[0] == "+" else -1
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def patient_identifiers(pid: Segment, sender: SenderConfig) -> list[Identifier]:
    """The identifiers of the PID's candidates that resolve, each once."""
    return resolved(patient_candidates(pid, sender))


def patient_candidates(pid: Segment, sender: SenderConfig) -> list[Candidate]:
    """PID-3 repetitions, then PID-2 and PID-4 (older senders), one candidate per CX-1 value."""
    return [
        *cx_candidates(pid.field(3), "PID-3", sender, numbered=True),
        *cx_candidates(pid.field(2), "PID-2", sender),
        *cx_candidates(pid.field(4), "PID-4", sender, numbered=True),
    ]


def cx_candidates(
    repetitions: FieldValues, name: str, sender: SenderConfig, numbered: bool = False
) -> list[Candidate]:
    """One candidate per repetition of a CX field with a value, named "PID-3[1]"…; without
    ``numbered``, a field of one repetition is named plainly ("PID-2")."""
    label_each = numbered or len(repetitions) > 1
    candidates = []
    for index, repetition in enumerate(repetitions, start=1):
        label = f"{name}[{index}]" if label_each else name
        candidate = _cx_candidate(repetition, label, sender)
        if candidate is not None:
            candidates.append(candidate)
    return candidates


def _cx_candidate(
    repetition: list[list[str]], label: str, sender: SenderConfig
) -> Candidate | None:
    value = repetition[0][0].strip()
    if not value:
        return None
    authority = [*(repetition[3] if len(repetition) > 3 else []), "", "", ""]
    namespace, universal, kind = (part.strip() for part in authority[:3])
    rule, system = _authority_system(namespace, universal, kind, sender)
    return Candidate(value, label, rule, system, namespace or universal)


def _authority_system(
    namespace: str, universal: str, kind: str, sender: SenderConfig
) -> tuple[Rule, str]:
    """The system of a CX-4 (HD: namespace, universal id, its type) by rules (a)–(d)."""
    if universal and kind.upper() == "ISO":
        return Rule.OID, f"urn:oid:{universal}"
    if namespace in sender.assigning_authorities:
        return Rule.MAPPED, sender.assigning_authorities[namespace]
    if namespace and sender.namespace_as_system:
        return Rule.NAMESPACE, namespace
    if not namespace and not universal and sender.default_authority:
        return Rule.DEFAULT_AUTHORITY, sender.default_authority
    return Rule.UNRESOLVED, ""


def observation_code(obx: Segment, sender: SenderConfig) -> str | None:
    """LOINC from OBX-3 or its alternate triplet, else the sender's local code map."""
    ce = [*obx.components(3), "", "", "", "", "", ""]  # CE/CWE: code, text, system, alternates
    for code, system in ((ce[0], ce[2]), (ce[3], ce[5])):
        if code and system in LOINC_SYSTEMS:
            return code
    for code in (ce[0], ce[3]):
        if code in sender.local_codes:
            return sender.local_codes[code]
    return None


_NEUTROPHIL_TEXT = re.compile(r"neutro|\bANC\b|\bsegs?\b|granulocyt", re.IGNORECASE)


def _looks_like_neutrophils(obx: Segment) -> bool:
    """An unmapped code whose text names neutrophils: flagged, so a code map can be fixed."""
    names = " ".join((obx.get(3, 1), obx.get(3, 2), obx.get(3, 5)))
    return bool(_NEUTROPHIL_TEXT.search(names))


def observation_value(obx: Segment) -> str:
    """OBX-5 as text; a structured numeric (SN) with a comparator keeps it (never a value)."""
    if obx.get(2, 1).upper() == "SN":
        comparator, number = obx.get(5, 1), obx.get(5, 2)
        return number if comparator in ("", "=") else f"{comparator}{number}"
    return obx.get(5, 1)


@dataclass(frozen=True)
class _Stamp:
    """One draw-time field as written: where it is (ERR-2) and its text."""

    location: str  # e.g. "OBR^1^7"
    text: str


@dataclass
class _Context:
    """The OBR group an OBX belongs to: its specimen, and the draw-time fields of its OBR and
    SPM ("SPM-17", "OBR-7", "OBR-14")."""

    specimen: str | None = None
    stamps: dict[DrawTimeField, _Stamp] = field(default_factory=dict)


def to_lab_report(
    message: Message, sender: SenderConfig, pack: RulePack, default_tz: tzinfo
) -> LabReport:
    """``pack``: the codes, units and analyte words results are read with."""
    pid = message.first("PID")
    candidates = patient_candidates(pid, sender) if pid else []
    results: list[LabResult] = []
    locations: list[str] = []
    problems: list[Hl7Problem] = []
    for read in obx_readings(message, sender, pack, default_tz):
        problems += read.problems
        if read.result is not None:
            results.append(read.result)
            locations.append(f"OBX^{read.sequence}")
    return LabReport(resolved(candidates), results, locations, problems, candidates)


@dataclass(frozen=True)
class ObxReading:
    """One OBX as the gateway reads it: its result (None: ignored, or unusable) and warnings."""

    sequence: int
    segment: Segment
    result: LabResult | None
    problems: list[Hl7Problem]


def obx_readings(
    message: Message, sender: SenderConfig, pack: RulePack, default_tz: tzinfo
) -> list[ObxReading]:
    """Every OBX of an ORU in order, each read in the context of its OBR group and SPM (what
    ``to_lab_report`` takes, and what `rems-gateway explain` shows)."""
    tz = ZoneInfo(sender.timezone) if sender.timezone else default_tz
    readings: list[ObxReading] = []
    group_spm = _first_spm_of_each_group(message)
    context = _Context()
    counts = {"OBR": 0, "SPM": 0, "OBX": 0}
    for segment in message.segments:
        if segment.name not in counts:
            continue
        counts[segment.name] += 1
        sequence = counts[segment.name]
        if segment.name == "OBR":
            context = _obr_context(segment, sequence, sender, group_spm.get(sequence))
        elif segment.name == "SPM":
            _read_spm(segment, sequence, sender, context)
        else:
            result, found = _read_obx(segment, sequence, sender, pack, context, tz)
            readings.append(ObxReading(sequence, segment, result, found))
    return readings


def _first_spm_of_each_group(message: Message) -> dict[int, _Stamp]:
    """SPM-17.1 of the first SPM with one in each OBR group, by the OBR's sequence: in ORU^R01
    the SPECIMEN group follows the OBX of its order, so it is read before them."""
    stamps: dict[int, _Stamp] = {}
    obr = spm = 0
    for segment in message.segments:
        if segment.name == "OBR":
            obr += 1
        elif segment.name == "SPM":
            spm += 1
            collected = segment.get(17, 1)
            if collected.strip() and obr not in stamps:
                stamps[obr] = _Stamp(f"SPM^{spm}^17", collected)
    return stamps


def _obr_context(obr: Segment, sequence: int, sender: SenderConfig, spm: _Stamp | None) -> _Context:
    filler = obr.get(3, 1) or obr.get(2, 1)
    stamps: dict[DrawTimeField, _Stamp] = {
        "OBR-7": _Stamp(f"OBR^{sequence}^7", obr.get(7, 1)),
        "OBR-14": _Stamp(f"OBR^{sequence}^14", obr.get(14, 1)),
    }
    if spm is not None:
        stamps["SPM-17"] = spm
    return _Context(f"{sender.key}|{filler}" if filler else None, stamps)


def _read_spm(spm: Segment, sequence: int, sender: SenderConfig, context: _Context) -> None:
    """The specimen of an OBR without filler or placer number; the collection time of the OBX
    that follow (the SPM an OBX follows outranks the first of the group)."""
    if context.specimen is None:
        accession = spm.get(2, 1) or spm.get(2, 2)
        context.specimen = f"{sender.key}|{accession}" if accession else None
    if spm.get(17, 1).strip():
        context.stamps["SPM-17"] = _Stamp(f"SPM^{sequence}^17", spm.get(17, 1))


def _read_obx(
    obx: Segment,
    sequence: int,
    sender: SenderConfig,
    pack: RulePack,
    context: _Context,
    tz: tzinfo,
) -> tuple[LabResult | None, list[Hl7Problem]]:
    """The result of an ANC-relevant OBX (None: ignored, or unusable) and its warnings."""
    code = observation_code(obx, sender)
    if code is None and _looks_like_neutrophils(obx):
        text = f"OBX-3 {obx.get(3, 1)!r} looks like a neutrophil count but is not mapped"
        return None, [Hl7Problem(f"OBX^{sequence}^3", "103", "W", "UNMAPPED_CANDIDATE", text)]
    if code is None or code not in relevant_codes(pack):
        return None, []  # not an ANC or a derivation input: ignored silently
    mismatch = code_text_mismatch(pack, code, (obx.get(3, 2), obx.get(3, 5)))
    if mismatch is not None:
        where = f"OBX^{sequence}^3"
        return None, [Hl7Problem(where, "103", "W", mismatch.code, mismatch.text)]
    status = RESULT_STATUS.get(obx.get(11, 1).upper() or "F")
    if status is None:
        return None, []  # e.g. N (not asked), O (order detail): no result
    obx_14 = _Stamp(f"OBX^{sequence}^14", obx.get(14, 1))
    stamps: dict[DrawTimeField, _Stamp] = {**context.stamps, "OBX-14": obx_14}
    drawn = _draw_time(stamps, sender.draw_time_field, tz, code)
    if isinstance(drawn, Hl7Problem):
        return None, [drawn]
    unit, problems = observation_unit(obx, sequence, pack)
    result = LabResult(code, observation_value(obx), unit, drawn.moment, status, context.specimen)
    return result, problems + ([drawn.warning] if drawn.warning else [])


def observation_unit(obx: Segment, sequence: int, pack: RulePack) -> tuple[str, list[Hl7Problem]]:
    """OBX-6.1, else OBX-6.2; a unit a sender split with an unescaped caret (``x10^9/L`` read as
    ``x10`` and ``9/L``) is joined again when the pieces form a known unit, with a warning."""
    components = obx.components(6)
    first = components[0] if components else ""
    if not is_known_unit(pack, first):
        for end in range(2, len(components) + 1):
            joined = "^".join(components[:end])
            if is_known_unit(pack, joined):
                text = f"OBX-6 {joined!r} has an unescaped ^ (write \\S\\): read as one unit"
                problem = Hl7Problem(f"OBX^{sequence}^6", "102", "W", "UNIT_UNESCAPED_CARET", text)
                return joined, [problem]
    return first or obx.get(6, 2), []


@dataclass(frozen=True)
class _Drawn:
    moment: datetime
    warning: Hl7Problem | None  # DRAW_TIME_INCONSISTENT


#: Present draw-time fields further apart than this are reported (DRAW_TIME_INCONSISTENT).
DRAW_TIME_SPREAD = timedelta(hours=24)


def _draw_time(
    stamps: dict[DrawTimeField, _Stamp], named: DrawTimeField | None, tz: tzinfo, code: str
) -> _Drawn | Hl7Problem:
    """The earliest present draw-time field (senders put received, analysis or result times in
    some of them, none earlier than the collection), or the one the sender names.

    A present field that is no time makes the result unusable (DRAW_TIME_INVALID) even when
    others can be read: it may be the collection time, and the others would make the ANC look
    fresher than it is."""
    present = {
        name: stamp
        for name, stamp in stamps.items()
        if stamp.text.strip() and named in (None, name)
    }
    if not present:
        where = stamps["OBX-14"].location if named is None else _named_location(stamps, named)
        return Hl7Problem(where, "101", "W", "DRAW_TIME_MISSING", f"{code}: no usable draw time")
    moments: dict[DrawTimeField, datetime] = {}
    for name, stamp in present.items():
        moment = hl7_time(stamp.text, tz)
        if moment is None:
            text = f"{code}: the draw time ({name}) is not a readable HL7 time"
            return Hl7Problem(stamp.location, "102", "W", "DRAW_TIME_INVALID", text)
        moments[name] = moment
    used = min(moments, key=lambda name: moments[name])
    spread = max(moments.values()) - moments[used]
    if spread <= DRAW_TIME_SPREAD:
        return _Drawn(moments[used], None)
    hours = spread.total_seconds() / 3600
    text = f"{code}: draw-time fields {hours:g} h apart; the earliest, {used}, is used"
    warning = Hl7Problem(present[used].location, "0", "W", "DRAW_TIME_INCONSISTENT", text)
    return _Drawn(moments[used], warning)


def _named_location(stamps: dict[DrawTimeField, _Stamp], named: DrawTimeField) -> str:
    return stamps[named].location if named in stamps else stamps["OBX-14"].location
