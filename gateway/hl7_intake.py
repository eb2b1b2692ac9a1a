"""HL7 v2 in: tokenize → ORU mapping → the application service → ACK (contracts.md §4).

The MLLP listener and the scenario runner's ``hl7`` steps both call ``Hl7Intake.receive``; it
decides nothing itself. The ACK is built inside the unit of work that stores the message, so a
message is in the database before its ACK leaves, and a resend gets the very same ACK.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.service import LabOutcome, ReceivedMessage, RemsService, Source
from mappings.hl7v2.ack import build_ack, wanted
from mappings.hl7v2.oru import Hl7Problem, LabReport, hl7_time, to_lab_report
from mappings.hl7v2.senders import SenderConfig, SenderDirectory
from mappings.hl7v2.tokenizer import HL7ParseError, Message, parse
from rems_core.model import AncResult
from rems_core.rulepack import DEFAULT_PACK

log = logging.getLogger("rems_gateway.hl7")

SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1")
PROCESSING_IDS = ("P", "T", "D")
#: Which HL7 table 0357 code an unusable-result warning carries in ERR-3.
WARNING_0357 = {
    "ANC_VALUE_INVALID": "102",
    "ANC_OUT_OF_RANGE": "102",
    "ANC_UNIT_SUSPECT": "102",
    "ANC_UNIT_UNKNOWN": "103",
    "PATIENT_NOT_MATCHED": "204",
}
WARNING_FIELD = {"ANC_UNIT_UNKNOWN": 6, "ANC_UNIT_SUSPECT": 6, "PATIENT_NOT_MATCHED": 3}


@dataclass(frozen=True)
class Received:
    ack: str | None  # None: the sender asked for no acknowledgment (MSH-15)
    code: str  # AA, AE or AR
    outcome: LabOutcome | None = None


class Rejected(Exception):
    """The message cannot be taken: an AR or AE with one ERR."""

    def __init__(self, code: str, problem: Hl7Problem) -> None:
        super().__init__(problem.text)
        self.code, self.problem = code, problem


def content_hash(data: bytes) -> str:
    """The message without MSH-7 (a resend may carry a new send time), line endings aside."""
    text = data.decode("latin-1")  # byte-preserving: only the structure matters here
    segments = [s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]
    if segments and segments[0].startswith("MSH") and len(segments[0]) > 3:
        fields = segments[0].split(segments[0][3])
        if len(fields) > 6:
            fields[6] = ""
        segments[0] = segments[0][3].join(fields)
    return hashlib.sha256("\r".join(segments).encode("latin-1")).hexdigest()


class Hl7Intake:
    def __init__(
        self, service: RemsService, senders: SenderDirectory, clock: str = "system"
    ) -> None:
        self.service = service
        self.senders = senders
        self.clock = clock
        codes = service.packs.get(DEFAULT_PACK).loinc.value
        self.relevant = {
            *codes.anc,
            *codes.wbc,
            *codes.neutrophils_pct,
            *codes.segmented_pct,
            *codes.bands_pct,
        }

    async def receive(self, data: bytes, now: datetime | None = None) -> Received:
        received = now or datetime.now(UTC)
        try:
            message = parse(data)
        except HL7ParseError as error:
            return self._unreadable(error, received)
        try:
            sender = self._check(message)
        except Rejected as rejected:
            return self._answer(message, rejected.code, [rejected.problem], received)
        if sender.validation == "strict":
            problem = await asyncio.to_thread(strict_problem, data, message.charset)
            if problem is not None:
                return self._answer(message, "AE", [problem], received)
        if self.clock == "message" and now is None:
            received = hl7_time(message.msh.get(7, 1), self.service.tz) or received
        report = to_lab_report(message, sender, self.relevant, self.service.tz)
        envelope = ReceivedMessage(
            sender=sender.key,
            control_id=message.msh.get(10, 1),
            content_hash=content_hash(data),
            message_type="ORU^R01",
            raw=data,
            received=received,
        )
        results: dict[str, LabOutcome | None] = {}

        def answer(outcome: LabOutcome | None, disposition: str) -> str:
            results["outcome"] = outcome
            code, problems = _disposition(report, outcome, disposition)
            return build_ack(message.msh, code, problems, _ack_id(envelope), received)

        try:
            ack = await self.service.receive_message(
                envelope, report.identifiers, report.results, answer, Source("mllp", sender.key)
            )
        except Exception as exc:  # the store is unavailable: nothing was half-written
            log.error("message not stored: %s", type(exc).__name__)
            problem = Hl7Problem("", "207", "E", "STORE_UNAVAILABLE", "try again later")
            return self._answer(message, "AR", [problem], received)
        code = ack.split("\r")[1].split("|")[1] if "\r" in ack else "AA"
        code = {"CA": "AA", "CE": "AE", "CR": "AR"}.get(code, code)
        return Received(ack if wanted(message.msh, code) else None, code, results.get("outcome"))

    def _check(self, message: Message) -> SenderConfig:
        msh = message.msh
        sender = self.senders.find(msh.get(3, 1), msh.get(4, 1))
        if sender is None:
            raise Rejected(
                "AR", Hl7Problem("MSH^1^3", "204", "E", "UNKNOWN_SENDER", "sender not configured")
            )
        checks = [
            (
                msh.get(9, 1) == "ORU",
                "MSH^1^9",
                "200",
                f"message type {msh.get(9, 1)!r} is not ORU",
            ),
            (msh.get(9, 2) == "R01", "MSH^1^9", "201", f"event {msh.get(9, 2)!r} is not R01"),
            (msh.get(11, 1) in PROCESSING_IDS, "MSH^1^11", "202", "processing id not P, T or D"),
            (msh.get(12, 1) in SUPPORTED_VERSIONS, "MSH^1^12", "203", "version not 2.3–2.8"),
            (bool(msh.get(10, 1)), "MSH^1^10", "101", "no message control id"),
        ]
        for ok, location, code, text in checks:
            if not ok:
                raise Rejected(
                    "AE" if code == "101" else "AR", Hl7Problem(location, code, "E", "", text)
                )
        if message.first("PID") is None:
            raise Rejected("AE", Hl7Problem("PID", "100", "E", "", "no PID segment"))
        return sender

    def _answer(
        self, message: Message, code: str, problems: list[Hl7Problem], received: datetime
    ) -> Received:
        ack = build_ack(message.msh, code, problems, f"ACK-{message.msh.get(10, 1)}", received)
        return Received(ack if wanted(message.msh, code) else None, code)

    def _unreadable(self, error: HL7ParseError, received: datetime) -> Received:
        problem = Hl7Problem(error.location, error.code, "E", "", str(error))
        code = "AR" if error.code.startswith("2") else "AE"
        return Received(build_ack(None, code, [problem], "ACK", received), code)


def strict_problem(data: bytes, charset: str) -> Hl7Problem | None:
    """hl7apy's strict validation (slow: run off the event loop), for senders that want it."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    text = data.decode(charset, "replace").replace("\r\n", "\r").replace("\n", "\r")
    try:
        parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()
    except Exception as exc:  # hl7apy's messages may quote the data: report the kind only
        kind = type(exc).__name__
        return Hl7Problem("", "102", "E", "STRICT_VALIDATION", f"strict HL7 validation: {kind}")
    return None


def _ack_id(envelope: ReceivedMessage) -> str:
    return f"ACK-{envelope.control_id}"


def _disposition(
    report: LabReport, outcome: LabOutcome | None, disposition: str
) -> tuple[str, list[Hl7Problem]]:
    if disposition == "conflict":
        text = "this control id was used for another message; held for review"
        return "AE", [Hl7Problem("MSH^1^10", "205", "E", "DUPLICATE_CONTROL_ID", text)]
    problems = list(report.problems)
    if outcome is not None:
        problems += [_warning("PID^1^3", w.code, w.text) for w in outcome.warnings]
        problems += [
            _warning(_location(report, anc), w.code, w.text)
            for anc in outcome.results
            for w in anc.warnings
        ]
    return "AA", problems


def _location(report: LabReport, anc: AncResult) -> str:
    for result, location in zip(report.results, report.locations, strict=True):
        if result.code == anc.code:
            return location
    return report.locations[0] if report.locations else ""


def _warning(location: str, code: str, text: str) -> Hl7Problem:
    field = WARNING_FIELD.get(code, 5)
    where = f"{location}^{field}" if location and location.count("^") == 1 else location
    return Hl7Problem(where, WARNING_0357.get(code, "0"), "W", code, text)
