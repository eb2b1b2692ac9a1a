"""`rems-gateway send`: HL7 files to an MLLP listener, waiting for exactly the ACKs that will come.

Our listener (docs/contracts.md §4) answers every message in original mode; in enhanced mode
(MSH-15 or MSH-16 present) it sends the accept acknowledgment as MSH-15 asks — `AL` (the default)
always, `NE` never, `ER` only when not accepted, `SU` only when accepted — and never a separate
application acknowledgment, whatever MSH-16 says. A message it cannot read is always answered.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from gateway.mllp.client import Reply, ReplyTimeout, exchange
from mappings.hl7v2.ack import accept_ack_type, wanted
from mappings.hl7v2.tokenizer import HL7ParseError, parse, split_batch

_OUR_CODES = ("AA", "AE", "AR")


@dataclass(frozen=True)
class Outgoing:
    message: bytes
    control_id: str  # MSH-10 ("" when the message cannot be read)
    silent: frozenset[str]  # our codes (AA, AE, AR) the listener answers with no ACK at all
    accept_ack: str = ""  # MSH-15 as the listener reads it (enhanced mode), e.g. "NE"

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

    def text(self, timeout_s: float) -> str:
        if self.ack is not None:
            return self.ack.decode("utf-8", "replace").replace("\r", "\n")
        policy = f"MSH-15 {self.outgoing.accept_ack}"
        if self.outgoing.reply is Reply.NEVER:
            return f"{self.outgoing.control_id}: no ACK ({policy}: none is sent)"
        meaning = "accepted" if self.accepted else "not accepted"
        return f"{self.outgoing.control_id}: no ACK within {timeout_s:g} s ({policy}: {meaning})"


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
    silent = frozenset(code for code in _OUR_CODES if not wanted(msh, code))
    return Outgoing(message, msh.get(10, 1), silent, accept_ack_type(msh))


class NoAck(Exception):
    """An ACK that must come did not; `answers` are those of the messages before it."""

    def __init__(self, message: str, answers: list[Answer]) -> None:
        super().__init__(message)
        self.answers = answers


async def send_all(
    host: str, port: int, outgoing: list[Outgoing], tls: ssl.SSLContext | None, timeout_s: float
) -> list[Answer]:
    """Every message on one connection, each answer in order."""
    try:
        acks = await exchange(host, port, [(o.message, o.reply) for o in outgoing], tls, timeout_s)
    except ReplyTimeout as exc:
        answered = [Answer(o, ack) for o, ack in zip(outgoing, exc.replies, strict=False)]
        late = outgoing[len(exc.replies)].control_id
        raise NoAck(f"no ACK to {late or 'an unreadable message'}: {exc}", answered) from None
    return [Answer(o, ack) for o, ack in zip(outgoing, acks, strict=True)]
