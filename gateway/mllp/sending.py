"""`rems-gateway send`: HL7 files to an MLLP listener, waiting for exactly the ACKs that will come.

Our listener (docs/contracts.md §4) answers every message in original mode; in enhanced mode
(MSH-15 or MSH-16 present) it sends the accept acknowledgment as MSH-15 asks — `AL` (the default)
always, `NE` never, `ER` only when not accepted, `SU` only when accepted — and never a separate
application acknowledgment, whatever MSH-16 says. A message it cannot read is always answered.

A pharmacy order (RDE, OMP) in enhanced mode is answered by its RRE/ORP whatever MSH-15/16 say,
after an accept ACK `CA` when MSH-15 asks for one: its answer is the RRE/ORP, the `CA` before it
is passed over (a refusal before the check, `CE`/`CR`, is its answer; with MSH-15 `NE` or `ER` a
refusal sends nothing, and the wait for the RRE ends in NoAck).

A message whose ACK may or may not come (`ER`, `SU`) is not waited for on its own: the listener
answers strictly in order, so the ACK of a later message (matched by MSA-2) settles every earlier
one still open; only those after the last ACK that must come are waited for, up to the timeout.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from gateway.mllp.client import MllpConnection, connect
from mappings.hl7v2.ack import accept_ack_type, enhanced_mode, wanted
from mappings.hl7v2.tokenizer import HL7ParseError, parse, split_batch

_OUR_CODES = ("AA", "AE", "AR")
_ORDERS = ("RDE", "OMP")  # answered by an RRE/ORP in enhanced mode too (docs/contracts.md §4)


class Reply(Enum):
    ALWAYS = "always"  # wait for it: none within the timeout is NoAck
    NEVER = "never"  # MSH-15 NE: none is sent
    MAYBE = "maybe"  # MSH-15 ER or SU: one only for some answers


@dataclass(frozen=True)
class Outgoing:
    message: bytes
    control_id: str  # MSH-10 ("" when the message cannot be read)
    silent: frozenset[str]  # our codes (AA, AE, AR) the listener answers with no ACK at all
    accept_ack: str = ""  # MSH-15 as the listener reads it (enhanced mode), e.g. "NE"
    after_accept: bool = False  # an order in enhanced mode: its RRE/ORP follows a CA

    @property
    def reply(self) -> Reply:
        if not self.silent:
            return Reply.ALWAYS
        return Reply.NEVER if len(self.silent) == len(_OUR_CODES) else Reply.MAYBE


@dataclass(frozen=True)
class Answer:
    """One message's answer: its ACK, or what the silence of the listener means."""

    outgoing: Outgoing
    ack: bytes | None

    @property
    def accepted(self) -> bool:
        if self.ack is None:
            return "AA" in self.outgoing.silent
        return b"MSA|AA" in self.ack or b"MSA|CA" in self.ack

    def text(self) -> str:
        if self.ack is not None:
            return self.ack.decode("utf-8", "replace").replace("\r", "\n")
        policy = f"MSH-15 {self.outgoing.accept_ack}"
        if self.outgoing.reply is Reply.NEVER:
            return f"{self.outgoing.control_id}: no ACK ({policy}: none is sent)"
        meaning = "accepted" if self.accepted else "not accepted"
        return f"{self.outgoing.control_id}: no ACK ({policy}: {meaning})"


class NoAck(Exception):
    """An ACK that must come did not; `answers` are those of the messages before it."""

    def __init__(self, message: str, answers: list[Answer]) -> None:
        super().__init__(message)
        self.answers = answers


def read_files(files: list[Path]) -> list[Outgoing]:
    """Each file's messages (one, or those of an FHS/BHS batch), in order. HL7ParseError names
    the file of a batch that cannot be split."""
    outgoing = []
    for file in files:
        data = file.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
        try:
            outgoing += [outgoing_message(message) for message in split_batch(data)]
        except HL7ParseError as exc:
            raise HL7ParseError(exc.code, f"{file}: {exc}", exc.location) from None
    return outgoing


def outgoing_message(message: bytes) -> Outgoing:
    try:
        msh = parse(message).msh
    except HL7ParseError:  # the listener cannot read MSH-15 either: it answers AE or AR
        return Outgoing(message, "", frozenset())
    if enhanced_mode(msh) and msh.get(9, 1) in _ORDERS:
        return Outgoing(message, msh.get(10, 1), frozenset(), accept_ack_type(msh), True)
    silent = frozenset(code for code in _OUR_CODES if not wanted(msh, code))
    return Outgoing(message, msh.get(10, 1), silent, accept_ack_type(msh))


async def send_all(
    host: str, port: int, outgoing: list[Outgoing], tls: ssl.SSLContext | None, timeout_s: float
) -> list[Answer]:
    """Every message on one connection, each answer in order; NoAck when an ACK that must come
    does not come within `timeout_s`."""
    async with connect(host, port, tls, timeout_s) as connection:
        exchange = _Exchange(connection, outgoing, timeout_s)
        for index, message in enumerate(outgoing):
            await connection.send(message.message)
            await exchange.sent(index)
        await exchange.settle_open()
    return exchange.answers()


class _Exchange:
    """Which message each ACK answers: its own when it must come, else the one MSA-2 names."""

    def __init__(
        self, connection: MllpConnection, outgoing: list[Outgoing], timeout_s: float
    ) -> None:
        self.connection, self.outgoing, self.timeout_s = connection, outgoing, timeout_s
        self.acks: list[bytes | None] = [None] * len(outgoing)
        self.open: list[int] = []  # ER/SU messages whose ACK may still come, oldest first

    def answers(self, count: int | None = None) -> list[Answer]:
        return [Answer(o, ack) for o, ack in zip(self.outgoing[:count], self.acks, strict=False)]

    async def sent(self, index: int) -> None:
        reply = self.outgoing[index].reply
        if reply is Reply.MAYBE:
            self.open.append(index)
        elif reply is Reply.ALWAYS:
            ack = await self._next(index)
            while self._settles_open(ack) or self._accept_before_answer(index, ack):
                ack = await self._next(index)
            self.acks[index] = ack
            self.open.clear()  # answered in order: an earlier ACK not come yet never will

    async def settle_open(self) -> None:
        """The ER/SU messages after the last ACK that must come: their ACKs, or silence."""
        while self.open:
            ack = await self.connection.reply(self.timeout_s, "an ER/SU message", self.acks)
            if ack is None or not self._settles_open(ack):
                return

    async def _next(self, index: int) -> bytes:
        where = f"message {index + 1} of {len(self.outgoing)}"
        ack = await self.connection.reply(self.timeout_s, where, self.acks)
        if ack is None:
            late = self.outgoing[index].control_id or "an unreadable message"
            text = f"no ACK to {late} ({where}) within {self.timeout_s:g} s"
            raise NoAck(text, self.answers(index))
        return ack

    def _accept_before_answer(self, index: int, ack: bytes) -> bool:
        """Whether ``ack`` is the CA before an order's RRE/ORP."""
        outgoing = self.outgoing[index]
        return outgoing.after_accept and _msa(ack)[:2] == ["CA", outgoing.control_id]

    def _settles_open(self, ack: bytes) -> bool:
        """Whether ``ack`` answers an open ER/SU message (MSA-2 its control id); those open
        before it are silent."""
        answered = _msa(ack)[1]
        for position, index in enumerate(self.open):
            if answered and self.outgoing[index].control_id == answered:
                self.acks[index] = ack
                del self.open[: position + 1]
                return True
        return False


def _msa(ack: bytes) -> list[str]:
    """MSA-1 and MSA-2 of an ACK ("" when unreadable)."""
    try:
        msa = parse(ack).first("MSA")
    except HL7ParseError:
        return ["", ""]
    return [msa.get(1, 1), msa.get(2, 1)] if msa is not None else ["", ""]
