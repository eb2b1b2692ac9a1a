"""The MLLP listener inside `serve`: the transport (mllp.py) around the HL7 intake.

Every message gets one INFO log line `hl7 message` when its answer is ready, a refused one too
(`disposition` `rejected`, with `refusal` the HL7 table 0357 code and ours): `control_id`
(MSH-10), `sender` (MSH-3.1|MSH-4.1), `message_type` (MSH-9.1^MSH-9.2), `ack_code` (ours: AA,
AE, AR), `ack_sent` (false when MSH-15 asks for none, or the connection is closed instead),
`disposition`, `latency_ms`, `peer`, `bytes`. Nothing else of the message: no patient's
identifier, name or value ever reaches a log line.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime

from gateway.app.service import RemsService
from gateway.mllp.intake import UNREADABLE, Hl7Intake, Received, identity, message_type
from gateway.mllp.server import CloseConnection, MllpServer, MllpSettings, PeerInfo
from mappings.hl7v2.ack import build_ack
from mappings.hl7v2.oru import Hl7Problem
from mappings.hl7v2.senders import SenderDirectory
from mappings.hl7v2.tokenizer import HL7ParseError, Segment, parse

log = logging.getLogger("rems_gateway.mllp")

AckObserver = Callable[[str, float], None]
"""Our ACK code (AA, AE, AR) and the seconds from arrival to ACK."""
MessageObserver = Callable[[str, str], None]
"""A message's type label (MSH-9 as "ORU^R01", "other", "unreadable") and its disposition."""
#: The longest MSH value a log line repeats (a refused message may hold anything there).
LOGGED_CHARACTERS = 64


class Hl7Listener:
    def __init__(
        self,
        service: RemsService,
        senders: SenderDirectory,
        settings: MllpSettings,
        clock: str = "system",
        on_ack: AckObserver | None = None,
        on_message: MessageObserver | None = None,
        processing_id: str = "P",
        sock: socket.socket | None = None,
    ) -> None:
        self.intake = Hl7Intake(service, senders, clock, processing_id)
        self.max_frame_bytes = settings.max_frame_bytes
        self.on_ack = on_ack
        self.on_message = on_message
        self.server = MllpServer(settings, self.handle, oversize_reply=self.oversize, sock=sock)

    async def handle(self, data: bytes, peer: PeerInfo) -> list[bytes] | None:
        started = time.perf_counter()
        received = await self.intake.receive(
            data, client_certificate_sha256=peer.tls_fingerprint_sha256
        )
        seconds = time.perf_counter() - started
        self._observe(received, seconds)
        frames = [a.encode("utf-8") for a in (received.ack, received.application_ack) if a]
        log_message(received, bool(frames), seconds, peer, len(data))
        if received.close_connection:
            raise CloseConnection("store unavailable; on_store_failure is no_ack")
        return frames or None

    def _observe(self, received: Received, seconds: float) -> None:
        if self.on_message is not None:
            self.on_message(received.message_type, received.disposition)
        if self.on_ack is not None and not received.close_connection:
            self.on_ack(received.code, seconds)

    def oversize(self, head: bytes) -> bytes | None:
        """An AE for a message over the frame limit, with its control id when MSH is readable
        (the transport logs its peer and size)."""
        started = time.perf_counter()
        msh = _readable_msh(head)
        kind = message_type(msh) if msh is not None else UNREADABLE
        if self.on_message is not None:
            self.on_message(kind, "rejected")
        text = f"message larger than {self.max_frame_bytes} bytes; not processed"
        problem = Hl7Problem("", "207", "E", "FRAME_TOO_LARGE", text)
        control = msh.get(10, 1) if msh is not None else ""
        sender = self.intake.senders.find(msh.get(3, 1), msh.get(4, 1)) if msh is not None else None
        msa_code = sender.msa_code if sender is not None else None
        ack = build_ack(
            msh, "AE", [problem], f"ACK-{control}", datetime.now(UTC), msa_code=msa_code
        )
        named = identity(msh) if msh is not None else {}
        received = Received(ack, "AE", message_type=kind, refusal="207 FRAME_TOO_LARGE", **named)
        log_message(received, True, time.perf_counter() - started)
        return ack.encode("utf-8")

    async def start(self) -> None:
        await self.server.start()
        log.info("MLLP listening", extra={"port": self.server.port})

    async def stop(self) -> None:
        await self.server.stop()


def log_message(
    received: Received,
    ack_sent: bool,
    seconds: float,
    peer: PeerInfo | None = None,
    size: int | None = None,
) -> None:
    """The one log line of a message (module docstring): what it was, what it got, how fast."""
    if not log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, object] = {
        "control_id": _shown(received.control_id),
        "sender": _shown(received.sender),
        "message_type": _shown(received.sent_type) or received.message_type,
        "ack_code": received.code,
        "ack_sent": ack_sent,
        "disposition": received.disposition,
        "latency_ms": round(seconds * 1000, 1),
    }
    if received.refusal:
        fields["refusal"] = received.refusal
    if peer is not None:
        fields["peer"] = peer.address
    if size is not None:
        fields["bytes"] = size
    log.info("hl7 message", extra=fields)


def _shown(value: str) -> str:
    return value if len(value) <= LOGGED_CHARACTERS else value[: LOGGED_CHARACTERS - 1] + "…"


def _readable_msh(head: bytes) -> Segment | None:
    try:
        return parse(head.split(b"\r", 1)[0]).msh
    except HL7ParseError:
        return None
