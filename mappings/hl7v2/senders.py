"""Per-sender configuration of HL7 v2 feeds (one YAML file): who may send, and how to read them.

A sender is identified by MSH-3 (sending application) and MSH-4 (sending facility), namespace ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SenderConfig(_Strict):
    application: str  # MSH-3.1
    facility: str = ""  # MSH-4.1
    local_codes: dict[str, str] = {}  # the sender's OBX-3 code → LOINC
    assigning_authorities: dict[str, str] = {}  # PID-3 CX-4.1 → identifier system
    timezone: str | None = None  # for times without an offset; default the gateway's
    charset_fallback: str | None = None  # e.g. cp1252, when bytes do not decode as MSH-18 says
    validation: Literal["tolerant", "strict"] = "tolerant"
    tls_fingerprint_sha256: str | None = None  # pin the client certificate

    @property
    def key(self) -> str:
        return f"{self.application}|{self.facility}"


class SenderDirectory(_Strict):
    accept_unknown: bool = False  # an unknown sender gets AR (True: read with defaults)
    senders: list[SenderConfig] = Field(default_factory=list)

    def find(self, application: str, facility: str) -> SenderConfig | None:
        for sender in self.senders:
            if sender.application == application and sender.facility in ("", facility):
                return sender
        if self.accept_unknown:
            return SenderConfig(application=application, facility=facility)
        return None

    @classmethod
    def load(cls, path: Path | None) -> SenderDirectory:
        if path is None:
            return cls(accept_unknown=True)  # no senders file: every sender, with defaults
        return cls.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
