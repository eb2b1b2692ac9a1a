"""HL7 v2 in: tokenize → ORU mapping → the application service → ACK (docs/contracts.md §4).

The MLLP listener and the scenario runner's ``hl7`` steps both call ``Hl7Intake.receive``; it
decides nothing itself. The ACK is built inside the unit of work that stores the message, so a
message is in the database before its ACK leaves, and a resend gets the very same ACK.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar, cast, get_args

from gateway.app.context import UnitContext
from gateway.app.service import REQUEST_ID_CONFLICT, RemsService
from gateway.app.values import (
    LabOutcome,
    OrdersDone,
    OrderWork,
    ReceivedMessage,
    Replayed,
    Source,
)
from mappings.hl7v2.ack import build_ack, enhanced_mode, wanted
from mappings.hl7v2.adt import AdtEvent, to_adt_event
from mappings.hl7v2.identity_text import ambiguous_text, unmatched_text
from mappings.hl7v2.limits import message_problem
from mappings.hl7v2.oru import Hl7Problem, LabReport, hl7_time, patient_candidates, to_lab_report
from mappings.hl7v2.pharmacy import (
    PRESCRIBER_FROM_REGISTRY,
    OrderRejected,
    PharmacyMessage,
    PharmacyOrder,
    to_dispense_record,
    to_pharmacy_message,
)
from mappings.hl7v2.pharmacy_ack import OrderAnswer, build_order_answer, dispensed, ended
from mappings.hl7v2.senders import SenderConfig, SenderDirectory
from mappings.hl7v2.tokenizer import HL7ParseError, Message, Segment, parse
from rems_core.identity import Candidate
from rems_core.model import AncResult, Decision, Finding
from rems_core.rda import DispenseFiled, DispenseOutcome
from rems_core.rulepack import DEFAULT_PACK
from rems_core.store.message_repo import StoredMessage

log = logging.getLogger("rems_gateway.hl7")
T = TypeVar("T")

SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1")
#: MSH-11 (HL7 table 0103) is P, T or D; a gateway applies one of them (serve --processing-id).
PROCESSING_ID_MISSING = Hl7Problem(
    "MSH^1^11", "101", "W", "PROCESSING_ID_MISSING", "no processing id (MSH-11): taken as P"
)
#: Which HL7 table 0357 code an unusable-result warning carries in ERR-3.
WARNING_0357 = {
    "ANC_VALUE_INVALID": "102",
    "ANC_OUT_OF_RANGE": "102",
    "ANC_UNIT_SUSPECT": "102",
    "ANC_UNIT_UNKNOWN": "103",
    "PATIENT_NOT_MATCHED": "204",
    "PATIENT_AMBIGUOUS": "204",
    "PATIENT_MERGE_REVIEW": "204",
}
WARNING_FIELD = {
    "ANC_UNIT_UNKNOWN": 6,
    "ANC_UNIT_SUSPECT": 6,
    "PATIENT_NOT_MATCHED": 3,
    "PATIENT_AMBIGUOUS": 3,
    "PATIENT_MERGE_REVIEW": 3,
}


#: MSH-9 values the metrics name; any other is "other", so a sender cannot grow the label set.
#: ORU^R01 is what we take; the rest are what a lab or pharmacy route may send us by mistake.
KNOWN_MESSAGE_TYPES = frozenset(
    {
        "ORU^R01", "ORU^R30", "OUL^R22", "OML^O21", "RDE^O11", "RDE^O01", "OMP^O09", "RDS^O13",
        "ADT^A01", "ADT^A04", "ADT^A08", "ADT^A28", "ADT^A31", "ADT^A34", "ADT^A40", "ADT^A47",
    }
)  # fmt: skip
UNREADABLE = "unreadable"
OTHER_TYPE = "other"
#: What became of a message: the service's dispositions, a resend answered from the stored ACK
#: (duplicate), refused before the store (rejected), or the store was unavailable (error).
Disposition = Literal[
    "accepted",
    "unmatched",
    "no_results",
    "ignored",
    "held",
    "duplicate",
    "conflict",
    "rejected",
    "error",
]
DISPOSITIONS: tuple[Disposition, ...] = get_args(Disposition)
_ACCEPT_CODE = {"CA": "AA", "CE": "AE", "CR": "AR"}
#: The events taken per message type (an ADT of any event is taken).
EVENTS = {"ORU": {"R01"}, "RDE": {"O11", "O01"}, "OMP": {"O09"}, "RDS": {"O13"}}
ORDER_TYPES = {"RDE", "OMP"}
DISPENSE_TYPE = "RDS"
#: A message larger than this is tokenized, checked and mapped on a worker thread.
OFF_LOOP_BYTES = 65_536


@dataclass(frozen=True)
class Received:
    ack: str | None  # None: the sender asked for no acknowledgment (MSH-15), or close_connection
    code: str  # AA, AE or AR: ours, before enhanced mode or the sender's ack_codes
    outcome: LabOutcome | None = None
    message_type: str = UNREADABLE  # MSH-9 as "ORU^R01", "other" or "unreadable"
    disposition: Disposition = "rejected"
    close_connection: bool = False  # send nothing and close: the sender's engine resends
    # Enhanced mode: the application's answer (RRE, ORP), sent after the accept ACK (``ack``).
    application_ack: str | None = None
    # For the log line of each message (never a patient's data): MSH-10, MSH-3.1|MSH-4.1 and
    # MSH-9.1^MSH-9.2 as sent ("" when unreadable), and why it was refused ("" when it was not):
    # the HL7 table 0357 code and ours, e.g. "204 UNKNOWN_SENDER".
    control_id: str = ""
    sender: str = ""
    sent_type: str = ""
    refusal: str = ""


@dataclass(frozen=True)
class Admitted:
    """A message past the checks before the store, with its clinical arrival time."""

    message: Message
    sender: SenderConfig
    received: datetime
    warnings: list[Hl7Problem]


@dataclass
class _Answered:
    """What ``answer`` built inside the unit of work (its last run, if the writer ran it again)."""

    ack: str | None = None
    code: str = "AA"
    outcome: LabOutcome | None = None
    disposition: Disposition = "accepted"


class Rejected(Exception):
    """The message cannot be taken: an AR or AE with one ERR."""

    def __init__(self, code: str, problem: Hl7Problem) -> None:
        super().__init__(problem.text)
        self.code, self.problem = code, problem


def content_hash(data: bytes) -> str:
    """The message without MSH-7 (a resend may carry a new send time), line endings and a
    leading byte order mark aside."""
    text = data.removeprefix(codecs.BOM_UTF8).decode("latin-1")  # byte-preserving: structure only
    segments = [s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]
    if segments and segments[0].startswith("MSH") and len(segments[0]) > 3:
        fields = segments[0].split(segments[0][3])
        if len(fields) > 6:
            fields[6] = ""
        segments[0] = segments[0][3].join(fields)
    return hashlib.sha256("\r".join(segments).encode("latin-1")).hexdigest()


def message_type(msh: Segment) -> str:
    """MSH-9 as a metrics label: "ORU^R01" when known, else "other"."""
    name = f"{msh.get(9, 1)}^{msh.get(9, 2)}"
    return name if name in KNOWN_MESSAGE_TYPES else OTHER_TYPE


class Hl7Admission:
    """The checks before the store, for every way a message comes in: the listener, `explain`
    (what would be answered) and `replay` (stored messages again)."""

    def __init__(
        self,
        senders: SenderDirectory,
        ctx: UnitContext,
        clock: str = "system",
        processing_id: str = "P",
    ) -> None:
        self.senders = senders
        self.ctx = ctx
        self.clock = clock
        self.processing_id = processing_id  # the MSH-11 it applies (serve --processing-id)
        self.pack = ctx.packs.get(DEFAULT_PACK)  # the codes and units ORUs are read with

    async def admit(
        self,
        data: bytes,
        now: datetime | None = None,
        client_certificate_sha256: str | None = None,
        *,
        connection: bool = True,
    ) -> Admitted | Received:
        """The checks before the store: the message read, its sender known, its type, version
        and processing id taken — or the refusal the sender gets. ``connection`` False: no
        connection to check a pinned certificate against (`explain`, `replay`)."""
        received = now or datetime.now(UTC)
        if len(data) > OFF_LOOP_BYTES:  # linear, but a large message is still milliseconds
            read = await asyncio.to_thread(self._read, data)
        else:
            read = self._read(data)
        if isinstance(read, HL7ParseError):
            return self._unreadable(read, received)
        message, problem = read
        sender = self.senders.find(message.msh.get(3, 1), message.msh.get(4, 1))
        try:
            if problem is not None:
                raise Rejected("AE", problem)
            if sender is None:
                raise Rejected("AR", UNKNOWN_SENDER)
            if connection:
                _check_certificate(sender, client_certificate_sha256)
            _check(message)
            warnings = _check_processing_id(message.msh, sender, self.processing_id)
            await _validate(sender, data, message)
        except Rejected as rejected:
            return self.refused(message, sender, rejected.code, [rejected.problem], received)
        if self.clock == "message" and now is None:
            received = hl7_time(message.msh.get(7, 1), self.ctx.tz) or received
        return Admitted(message, sender, received, warnings)

    def _read(self, data: bytes) -> tuple[Message, Hl7Problem | None] | HL7ParseError:
        """Tokenized, and checked against the limits (docs/contracts.md §4)."""
        try:
            message = parse(data)
        except HL7ParseError as error:
            return error
        return message, message_problem(message, self.senders.limits)

    def _received(
        self,
        message: Message,
        ack: str,
        code: str,
        outcome: LabOutcome | None,
        disposition: Disposition,
        refusal: str = "",
    ) -> Received:
        kept = ack if wanted(message.msh, code) else None
        kind = message_type(message.msh)
        return Received(
            kept, code, outcome, kind, disposition, refusal=refusal, **identity(message.msh)
        )

    def refused(
        self,
        message: Message,
        sender: SenderConfig | None,
        code: str,
        problems: list[Hl7Problem],
        received: datetime,
        disposition: Disposition = "rejected",
    ) -> Received:
        msa_code = sender.msa_code if sender is not None else None
        control = message.msh.get(10, 1)
        ack = build_ack(message.msh, code, problems, f"ACK-{control}", received, msa_code=msa_code)
        return self._received(message, ack, code, None, disposition, refusal_of(problems))

    def _unreadable(self, error: HL7ParseError, received: datetime) -> Received:
        problem = Hl7Problem(error.location, error.code, "E", "", str(error))
        code = "AR" if error.code.startswith("2") else "AE"
        ack = build_ack(None, code, [problem], "ACK", received)
        return Received(ack, code, refusal=refusal_of([problem]))


class Hl7Intake(Hl7Admission):
    def __init__(
        self,
        service: RemsService,
        senders: SenderDirectory,
        clock: str = "system",
        processing_id: str = "P",
    ) -> None:
        super().__init__(senders, service.ctx, clock, processing_id)
        self.service = service

    async def receive(
        self,
        data: bytes,
        now: datetime | None = None,
        *,
        client_certificate_sha256: str | None = None,
    ) -> Received:
        """One message in, its answer out. ``client_certificate_sha256``: the fingerprint of the
        connection's verified client certificate (None: plain TCP, or TLS without one)."""
        admitted = await self.admit(data, now, client_certificate_sha256)
        if isinstance(admitted, Received):
            return admitted
        message, sender, received = admitted.message, admitted.sender, admitted.received
        return await self._store(message, sender, data, received, admitted.warnings)

    async def replay_stored_messages(
        self,
        stored: Iterable[StoredMessage],
        source: Source,
        each: Callable[[Replayed], None] | None = None,
    ) -> list[Replayed]:
        """Stored ORU^R01 messages processed again, oldest first, under this intake's senders
        file and rules, with their original arrival time (``RemsService.replay_message``: a
        result on file already is not stored again). ``source``: who replays them; ``each``
        is told of every message done (a progress bar, the console)."""
        done = []
        for message in stored:
            replayed = await self.replay_stored_message(message, source)
            done.append(replayed)
            if each is not None:
                each(replayed)
        return done

    async def replay_stored_message(self, stored: StoredMessage, source: Source) -> Replayed:
        """One stored message processed again (see ``replay_stored_messages``)."""
        skipped = Replayed(
            stored.row_id, stored.sender, stored.control_id, stored.disposition, "", ""
        )
        if not stored.raw:
            note = "its body is not kept (purged, or an ADT of nobody): not replayed"
            return replace(skipped, after=stored.disposition, note=note)
        if stored.message_type != "ORU^R01":
            note = f"{stored.message_type}: only ORU^R01 lab results are replayed"
            return replace(skipped, after=stored.disposition, note=note)
        admitted = await self.admit(stored.raw, stored.received, connection=False)
        if isinstance(admitted, Received):
            note = f"refused under the current configuration ({admitted.code}): not replayed"
            return replace(skipped, after=stored.disposition, note=note)
        report = to_lab_report(admitted.message, admitted.sender, self.pack, self.ctx.tz)
        return await self.service.replay_message(stored, report.candidates, report.results, source)

    async def _store(
        self,
        message: Message,
        sender: SenderConfig,
        data: bytes,
        received: datetime,
        warnings: list[Hl7Problem],
    ) -> Received:
        """The unit of work: stored with its ACK, or the stored ACK of a resend."""
        if message.msh.get(9, 1) in ORDER_TYPES:
            return await self._orders(message, sender, data, received, warnings)
        if message.msh.get(9, 1) == DISPENSE_TYPE:
            return await self._dispense(message, sender, data, received, warnings)
        is_adt = message.msh.get(9, 1) == "ADT"
        kind = f"ADT^{message.msh.get(9, 2)}" if is_adt else "ORU^R01"
        envelope = _envelope(message, sender, data, received, kind)
        source = Source("mllp", sender.key, envelope.control_id)
        answered = _Answered()
        if is_adt:
            event = to_adt_event(message, sender)
            report = LabReport([], [], [], candidates=_adt_candidates(event))
        else:
            report = await _mapped(
                len(data), to_lab_report, message, sender, self.pack, self.ctx.tz
            )
        report = replace(report, problems=[*warnings, *report.problems])

        def answer(outcome: LabOutcome | None, disposition: str) -> str:
            code, ack = lab_ack(message, sender, report, outcome, disposition, received)
            answered.ack, answered.code = ack, code
            # the service's dispositions are a subset of ours (gateway/app/units/messages.py)
            answered.outcome, answered.disposition = outcome, cast(Disposition, disposition)
            return ack

        try:
            if is_adt:
                ack = await self.service.receive_adt(envelope, event, answer, source)
            else:
                ack = await self.service.receive_message(
                    envelope, report.candidates, report.results, answer, source
                )
        except Exception as exc:  # the store is unavailable: nothing was half-written
            return self._store_failed(message, sender, exc, received)
        # The service calls answer() for a new message only; a resend gets the stored ACK, a
        # string answer() did not build (identity, not equality: the text may be the same).
        if ack is not answered.ack:
            code = our_code(message.msh, sender, ack)
            return self._received(message, ack, code, None, "duplicate")
        return self._received(message, ack, answered.code, answered.outcome, answered.disposition)

    async def _orders(
        self,
        message: Message,
        sender: SenderConfig,
        data: bytes,
        received: datetime,
        warnings: list[Hl7Problem],
    ) -> Received:
        """RDE/OMP: the dispense checks, stored with the RRE/ORP; a resend gets the stored one."""
        msh = message.msh
        try:
            orders = to_pharmacy_message(message, sender, received, self.ctx.tz)
        except OrderRejected as rejected:
            return self.refused(message, sender, "AE", [rejected.problem], received)
        kind = f"{msh.get(9, 1)}^{msh.get(9, 2)}"
        reply = _PharmacyReply(message, sender, _envelope(message, sender, data, received, kind))

        def answer(done: OrdersDone, disposition: str) -> str:
            code, answers, problems = orders_answered(orders, done, disposition, warnings)
            return reply.build(code, answers, problems, disposition)

        source = Source("mllp", sender.key, reply.envelope.control_id)
        work = OrderWork([o.request for o in orders.orders], [e.end for e in orders.ends])
        stored = self.service.receive_orders(
            reply.envelope, orders.candidates, work, answer, source
        )
        return await self._pharmacy_sent(reply, stored)

    async def _dispense(
        self,
        message: Message,
        sender: SenderConfig,
        data: bytes,
        received: datetime,
        warnings: list[Hl7Problem],
    ) -> Received:
        """RDS^O13: the dispense filed against its RDA, stored with the RRD^O14; a resend gets
        the stored one."""
        try:
            record = to_dispense_record(message, sender, received, self.ctx.tz)
        except OrderRejected as rejected:
            return self.refused(message, sender, "AE", [rejected.problem], received)
        pid = message.first("PID")
        candidates = patient_candidates(pid, sender) if pid is not None else []
        reply = _PharmacyReply(
            message, sender, _envelope(message, sender, data, received, "RDS^O13")
        )

        def answer(done: OrdersDone, disposition: str) -> str:
            answers, problems = [], list(warnings)
            if disposition == "conflict":
                problems = [REUSED_CONTROL_ID]
            else:
                (filed,) = done.filed
                recorded = filed.outcome != DispenseOutcome.REFUSED
                answers = [dispensed(record.request_id or "", filed.rda, recorded, _filed(filed))]
            code = "AE" if disposition == "conflict" else "AA"
            return reply.build(code, answers, problems, disposition)

        source = Source("mllp", sender.key, reply.envelope.control_id)
        stored = self.service.receive_dispense(reply.envelope, candidates, record, answer, source)
        return await self._pharmacy_sent(reply, stored)

    async def _pharmacy_sent(self, reply: _PharmacyReply, stored: Awaitable[str]) -> Received:
        """The answer the unit of work stored, or the stored answer of a resend."""
        message, sender = reply.message, reply.sender
        try:
            text = await stored
        except Exception as exc:  # the store is unavailable: nothing was half-written
            return self._store_failed(message, sender, exc, reply.envelope.received)
        answered = reply.answered
        if text is not answered.ack:
            answered = _Answered(text, our_code(message.msh, sender, text), None, "duplicate")
        return self._order_received(message, answered, reply.envelope.received)

    def _order_received(
        self, message: Message, answered: _Answered, received: datetime
    ) -> Received:
        """In enhanced mode the accept ACK (as MSH-15 asks) comes first, then the RRE/ORP, which
        is sent whatever MSH-16 says: a dispense check nobody hears is of no use."""
        msh, kind = message.msh, message_type(message.msh)
        answer = answered.ack or ""
        if not enhanced_mode(msh):
            return Received(
                answer, answered.code, None, kind, answered.disposition, **identity(message.msh)
            )
        accept = build_ack(msh, "AA", [], f"ACK-{msh.get(10, 1)}", received)
        kept = accept if wanted(msh, "AA") else None
        return Received(
            kept,
            answered.code,
            None,
            kind,
            answered.disposition,
            application_ack=answer,
            **identity(message.msh),
        )

    def _store_failed(
        self, message: Message, sender: SenderConfig, exc: Exception, received: datetime
    ) -> Received:
        log.error(
            "message not stored: %s",
            type(exc).__name__,
            extra={"sender": sender.key, "on_store_failure": sender.on_store_failure},
        )
        if sender.on_store_failure == "no_ack":
            return Received(
                None,
                "AR",
                None,
                message_type(message.msh),
                "error",
                close_connection=True,
                refusal="207 STORE_UNAVAILABLE",
                **identity(message.msh),
            )
        problem = Hl7Problem("", "207", "E", "STORE_UNAVAILABLE", "try again later")
        return self.refused(message, sender, "AR", [problem], received, "error")


def refusal_of(problems: list[Hl7Problem]) -> str:
    """The first error as the log line names it: its 0357 code and ours (no text: it may quote
    the message)."""
    first = next((p for p in problems if p.severity == "E"), None)
    return f"{first.hl7_code} {first.code}".strip() if first is not None else ""


def identity(msh: Segment) -> dict[str, str]:
    """MSH-10, MSH-3.1|MSH-4.1 and MSH-9.1^MSH-9.2 as sent, for the log line of the message."""
    return {
        "control_id": msh.get(10, 1),
        "sender": f"{msh.get(3, 1)}|{msh.get(4, 1)}",
        "sent_type": f"{msh.get(9, 1)}^{msh.get(9, 2)}",
    }


UNKNOWN_SENDER = Hl7Problem("MSH^1^3", "204", "E", "UNKNOWN_SENDER", "sender not configured")
# Table 0357 has no "not authorized" code. 204 (unknown key identifier) says what happened: the
# sender named in MSH-3/MSH-4 is not known on this connection, as for UNKNOWN_SENDER; 207
# (application internal error) would send the sender's team looking for our fault, and engines
# often retry it as transient, which a certificate mismatch never is.
CERTIFICATE_MISMATCH = Hl7Problem(
    "MSH^1^3",
    "204",
    "E",
    "SENDER_CERTIFICATE_MISMATCH",
    "the connection's client certificate is not the one configured for this sender",
)


def _check_certificate(sender: SenderConfig, fingerprint: str | None) -> None:
    """A pinned sender only over a connection with its client certificate (mutual TLS)."""
    pinned = sender.tls_fingerprint_sha256
    if pinned is None or (fingerprint is not None and fingerprint.lower() == pinned):
        return
    log.warning(
        "sender certificate mismatch: message refused",
        extra={"sender": sender.key, "client_certificate": fingerprint is not None},
    )
    raise Rejected("AR", CERTIFICATE_MISMATCH)


REUSED_CONTROL_ID = Hl7Problem(
    "MSH^1^10",
    "205",
    "E",
    "DUPLICATE_CONTROL_ID",
    "this control id was used for another message; held for review",
)


def _check(message: Message) -> None:
    msh = message.msh
    kind, event = msh.get(9, 1), msh.get(9, 2)
    taken = "ORU, ADT, RDE or OMP"
    checks = [
        (kind == "ADT" or kind in EVENTS, "MSH^1^9", "200", f"type {kind!r} is not {taken}"),
        (kind == "ADT" or event in EVENTS.get(kind, ()), "MSH^1^9", "201", f"event {event!r}"),
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


def _check_processing_id(msh: Segment, sender: SenderConfig, taken: str) -> list[Hl7Problem]:
    """Only messages of this gateway's processing id reach patients' files: a production gateway
    answers training and debugging messages AR 202 (docs/contracts.md §4). An empty MSH-11 is P,
    with a warning, unless the sender must send one."""
    given = msh.get(11, 1)
    if not given and sender.require_processing_id:
        raise Rejected("AE", Hl7Problem("MSH^1^11", "101", "E", "", "no processing id (MSH-11)"))
    if (given or "P") != taken:
        text = f"processing id {given or 'P'!r}: this gateway takes {taken} messages only"
        raise Rejected("AR", Hl7Problem("MSH^1^11", "202", "E", "", text))
    return [] if given else [PROCESSING_ID_MISSING]


#: MSH-2 without an escape character is taken from tolerant senders only (docs/contracts.md §4).
NO_ESCAPE_CHARACTER = Hl7Problem(
    "MSH^1^2",
    "102",
    "E",
    "STRICT_VALIDATION",
    "MSH-2 has 3 encoding characters (no escape character), not 4 (or 5 from v2.7)",
)


async def _validate(sender: SenderConfig, data: bytes, message: Message) -> None:
    if sender.validation == "strict":
        if message.encoding.escape is None:
            raise Rejected("AE", NO_ESCAPE_CHARACTER)
        problem = await asyncio.to_thread(strict_problem, data, message.charset)
        if problem is not None:
            raise Rejected("AE", problem)


def our_code(msh: Segment, sender: SenderConfig, ack: str) -> str:
    """AA, AE or AR of a stored ACK, from its MSA-1 as enhanced mode or ack_codes wrote it."""
    segments = ack.split("\r")
    fields = segments[1].split("|") if len(segments) > 1 else []
    msa_1 = fields[1] if len(fields) > 1 else "AA"
    return _ACCEPT_CODE.get(msa_1, msa_1) if enhanced_mode(msh) else sender.our_code(msa_1)


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


async def _mapped(size: int, work: Callable[..., T], *args: Any) -> T:
    """``work(*args)``, on a worker thread for a large message, so the event loop stays free."""
    if size > OFF_LOOP_BYTES:
        return await asyncio.to_thread(work, *args)
    return work(*args)


def _envelope(
    message: Message, sender: SenderConfig, data: bytes, received: datetime, kind: str
) -> ReceivedMessage:
    return ReceivedMessage(
        sender=sender.key,
        control_id=message.msh.get(10, 1),
        content_hash=content_hash(data),
        message_type=kind,
        raw=data,
        received=received,
    )


def _ack_id(envelope: ReceivedMessage) -> str:
    return f"ACK-{envelope.control_id}"


def lab_ack(
    message: Message,
    sender: SenderConfig,
    report: LabReport,
    outcome: LabOutcome | None,
    disposition: str,
    received: datetime,
) -> tuple[str, str]:
    """Our code (AA/AE) and the ACK of an ORU or ADT message, from what its unit of work did."""
    code, problems = _disposition(report, outcome, disposition, sender)
    control_id = f"ACK-{message.msh.get(10, 1)}"
    return code, build_ack(
        message.msh, code, problems, control_id, received, msa_code=sender.msa_code
    )


def orders_answered(
    orders: PharmacyMessage, done: OrdersDone, disposition: str, warnings: list[Hl7Problem]
) -> tuple[str, list[OrderAnswer], list[Hl7Problem]]:
    """Our code, the ORCs and the message-level findings of an RRE/ORP. A control id used
    before for another message (``conflict``): no order was decided, none is answered."""
    if disposition == "conflict":
        return "AE", [], [REUSED_CONTROL_ID]
    decisions = done.decided
    answers = [_order_answer(o, d) for o, d in zip(orders.orders, decisions, strict=True)]
    answers += [
        ended(e.sequence, e.placer, e.end.action, result.known)
        for e, result in zip(orders.ends, done.ended, strict=True)
    ]
    answers.sort(key=lambda a: a.sequence)
    refused = any(isinstance(d, Finding) for d in decisions)
    return "AE" if refused else "AA", answers, list(warnings)


def order_reply(
    message: Message,
    sender: SenderConfig,
    data: bytes,
    received: datetime,
    answered: tuple[str, list[OrderAnswer], list[Hl7Problem]],
) -> str:
    """The RRE/ORP text of ``orders_answered`` (as the unit of work builds and stores it)."""
    kind = f"{message.msh.get(9, 1)}^{message.msh.get(9, 2)}"
    reply = _PharmacyReply(message, sender, _envelope(message, sender, data, received, kind))
    code, answers, problems = answered
    return reply.build(code, answers, problems, "accepted")


def _adt_candidates(event: AdtEvent) -> list[Candidate]:
    return [c for patient in event.patients for c in (*patient.candidates, *patient.prior)]


@dataclass
class _PharmacyReply:
    """The RRE/ORP/RRD of a pharmacy message, as its unit of work builds it."""

    message: Message
    sender: SenderConfig
    envelope: ReceivedMessage
    answered: _Answered = field(default_factory=_Answered)

    def build(
        self, code: str, answers: list[OrderAnswer], problems: list[Hl7Problem], disposition: str
    ) -> str:
        msh = self.message.msh
        msa_code = None if enhanced_mode(msh) else self.sender.msa_code
        received = self.envelope.received
        control_id = _ack_id(self.envelope)
        text = build_order_answer(msh, code, answers, problems, control_id, received, msa_code)
        self.answered.ack, self.answered.code = text, code
        self.answered.disposition = cast(Disposition, disposition)
        return text


def _filed(filed: DispenseFiled) -> list[Hl7Problem]:
    """A dispense's refusals (E) and warnings (W), at its ORC."""
    problems = [Hl7Problem("ORC^1^3", "0", "E", r.code, r.text) for r in filed.reasons]
    return problems + [Hl7Problem("ORC^1", "0", "W", w.code, w.text) for w in filed.warnings]


def _order_answer(order: PharmacyOrder, decided: Decision | Finding) -> OrderAnswer:
    problems = list(order.problems)
    if order.prescriber_from_registry:
        text = "no prescriber NPI in ORC-12, PV1-7 or PV1-8: the patient's enrolling prescriber"
        where = f"ORC^{order.sequence}^12"
        problems.append(Hl7Problem(where, "0", "W", PRESCRIBER_FROM_REGISTRY, text))
    if isinstance(decided, Decision):
        return OrderAnswer(order.sequence, order.placer, decided, problems)
    # no decision: the placer number was used for another order (205), or no rule pack
    conflict = decided.code == REQUEST_ID_CONFLICT
    where = f"ORC^{order.sequence}^2" if conflict else f"ORC^{order.sequence}"
    problems.append(Hl7Problem(where, "205" if conflict else "0", "E", decided.code, decided.text))
    return OrderAnswer(order.sequence, order.placer, None, problems)


def _disposition(
    report: LabReport, outcome: LabOutcome | None, disposition: str, sender: SenderConfig
) -> tuple[str, list[Hl7Problem]]:
    if disposition == "conflict":
        return "AE", [REUSED_CONTROL_ID]
    problems = list(report.problems)
    if outcome is not None:
        problems += [
            _warning("PID^1^3", w.code, _patient_text(report, w.code, w.text, sender))
            for w in outcome.warnings
        ]
        problems += [
            _warning(_location(report, anc), w.code, w.text)
            for anc in outcome.results
            for w in anc.warnings
        ]
    return "AA", problems


def _patient_text(report: LabReport, code: str, text: str, sender: SenderConfig) -> str:
    """The ERR-8 of a patient finding: which identifiers were tried (masked), and what would
    resolve a bare one."""
    if code == "PATIENT_NOT_MATCHED":
        return unmatched_text(report.candidates, sender.key)
    if code == "PATIENT_AMBIGUOUS":
        return ambiguous_text(report.candidates, 2)
    return text


def _location(report: LabReport, anc: AncResult) -> str:
    for result, location in zip(report.results, report.locations, strict=True):
        if result.code == anc.code:
            return location
    return report.locations[0] if report.locations else ""


def _warning(location: str, code: str, text: str) -> Hl7Problem:
    field = WARNING_FIELD.get(code, 5)
    where = f"{location}^{field}" if location and location.count("^") == 1 else location
    return Hl7Problem(where, WARNING_0357.get(code, "0"), "W", code, text)
