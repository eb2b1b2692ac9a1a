"""The MLLP listener inside `serve`: the transport (mllp.py) around the HL7 intake."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from gateway.hl7_intake import Hl7Intake
from gateway.mllp import MllpServer, MllpSettings, PeerInfo
from gateway.service import RemsService
from mappings.hl7v2.ack import build_ack
from mappings.hl7v2.oru import Hl7Problem
from mappings.hl7v2.senders import SenderDirectory
from mappings.hl7v2.tokenizer import HL7ParseError, parse

log = logging.getLogger("rems_gateway.mllp")


class Hl7Listener:
    def __init__(
        self,
        service: RemsService,
        senders: SenderDirectory,
        settings: MllpSettings,
        clock: str = "system",
        on_ack: object | None = None,
    ) -> None:
        self.intake = Hl7Intake(service, senders, clock)
        self.max_frame_bytes = settings.max_frame_bytes
        self.on_ack = on_ack
        self.server = MllpServer(settings, self.handle, oversize_reply=self.oversize)

    async def handle(self, data: bytes, peer: PeerInfo) -> bytes | None:
        started = time.perf_counter()
        received = await self.intake.receive(data)
        if callable(self.on_ack):
            self.on_ack(received.code, time.perf_counter() - started)
        return received.ack.encode("utf-8") if received.ack is not None else None

    def oversize(self, head: bytes) -> bytes | None:
        """An AE for a message over the frame limit, with its control id when MSH is readable."""
        try:
            msh = parse(head.split(b"\r", 1)[0]).msh
        except HL7ParseError:
            msh = None
        text = f"message larger than {self.max_frame_bytes} bytes; not processed"
        problem = Hl7Problem("", "207", "E", "FRAME_TOO_LARGE", text)
        control = msh.get(10, 1) if msh is not None else ""
        return build_ack(msh, "AE", [problem], f"ACK-{control}", datetime.now(UTC)).encode("utf-8")

    async def start(self) -> None:
        await self.server.start()
        log.info("MLLP listening", extra={"port": self.server.port})

    async def stop(self) -> None:
        await self.server.stop()
