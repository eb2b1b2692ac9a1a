"""Values the application service and its units of work exchange with the channels."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rems_core.model import AncResult, Finding


@dataclass(frozen=True)
class Source:
    """Where an event came from, for the record: the channel and the authenticated actor."""

    channel: str
    actor: str = ""


@dataclass(frozen=True)
class ReceivedMessage:
    """An HL7 v2 message as the store keeps it."""

    sender: str  # MSH-3|MSH-4
    control_id: str  # MSH-10
    content_hash: str  # of the message without MSH-7, to tell a resend from a reuse of the id
    message_type: str
    raw: bytes
    received: datetime  # the clinical "now" of its arrival


@dataclass(frozen=True)
class LabOutcome:
    patient: str | None
    results: tuple[AncResult, ...]
    warnings: tuple[Finding, ...] = ()

    @property
    def matched(self) -> bool:
        return self.patient is not None
