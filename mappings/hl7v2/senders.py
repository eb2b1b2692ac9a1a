"""Per-sender configuration of HL7 v2 feeds (one YAML file): who may send, and how to read them.

A sender is identified by MSH-3 (sending application) and MSH-4 (sending facility), namespace ids.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

#: HL7 table 0008 (acknowledgment code): what MSA-1 may carry.
AckCode = Literal["AA", "AE", "AR", "CA", "CE", "CR"]
#: Our application acknowledgments (original mode): accept, error, reject.
OurAckCode = Literal["AA", "AE", "AR"]
#: The fields a draw time is read from (docs/contracts.md §4); a sender may name one of them.
DrawTimeField = Literal["SPM-17", "OBR-7", "OBR-14", "OBX-14"]
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: A segment and field, e.g. `TQ1-6` or `ZRX-3`: where a sender puts an order's days supply.
_SEGMENT_FIELD = re.compile(r"[A-Z][A-Z0-9]{2}-[1-9][0-9]{0,2}")
_NPI = re.compile(r"[0-9]{10}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SenderConfig(_Strict):
    application: str  # MSH-3.1
    facility: str = ""  # MSH-4.1
    local_codes: dict[str, str] = {}  # the sender's OBX-3 code → LOINC
    assigning_authorities: dict[str, str] = {}  # PID-3 CX-4.1 → identifier system
    default_authority: str | None = None  # identifier system of a CX without CX-4: rule (d)
    namespace_as_system: bool = True  # rule (c): an unmapped CX-4.1 text is itself the system
    timezone: str | None = None  # for times without an offset; default the gateway's
    # The one field that holds this sender's collection time (default: the earliest present).
    draw_time_field: DrawTimeField | None = None
    charset_fallback: str | None = None  # e.g. cp1252, when bytes do not decode as MSH-18 says
    validation: Literal["tolerant", "strict"] = "tolerant"
    require_processing_id: bool = False  # an empty MSH-11 is AE 101 (else taken as P, warned)
    # Pin the client certificate: SHA-256 over its DER, kept as 64 lower-case hex digits.
    tls_fingerprint_sha256: str | None = None
    # The store is unavailable: `ar` answers AR 207; `no_ack` sends nothing and closes the
    # connection, so the sender's engine times out and resends (engines that drop an AR'd message).
    on_store_failure: Literal["ar", "no_ack"] = "ar"
    # MSA-1 in original mode: our AA/AE/AR → the code the sender's engine expects (default: as is).
    ack_codes: dict[OurAckCode, AckCode] = {}
    # Pharmacy orders (RDE, OMP, RDS): the sender's drug code (local or NDC) → RxNorm; the field
    # of the days supply (CQ: quantity^unit, default TQ1-6); the pharmacy when RXE-40 names none;
    # every order of the sender is a discharge (a discharge pharmacy's feed).
    drug_codes: dict[str, str] = {}
    days_supply_field: str | None = None
    pharmacy_npi: str | None = None
    discharge: bool = False

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        """Checked when the file is read: a misspelt zone would fail every message later."""
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError("an IANA time zone name, e.g. America/Chicago") from None
        return value

    @field_validator("charset_fallback")
    @classmethod
    def _charset(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError("a character set Python knows, e.g. cp1252") from None
        return value

    @field_validator("days_supply_field")
    @classmethod
    def _segment_field(cls, value: str | None) -> str | None:
        if value is not None and not _SEGMENT_FIELD.fullmatch(value):
            raise ValueError("a segment and a field number, e.g. TQ1-6 or ZRX-3")
        return value

    @field_validator("pharmacy_npi")
    @classmethod
    def _npi(cls, value: str | None) -> str | None:
        if value is not None and not _NPI.fullmatch(value):
            raise ValueError("an NPI is 10 digits")
        return value

    @field_validator("tls_fingerprint_sha256")
    @classmethod
    def _normalize_fingerprint(cls, value: str | None) -> str | None:
        """`AB:CD:…` (openssl's form) or `abcd…`, either case → `abcd…`."""
        if value is None:
            return None
        digits = value.strip().replace(":", "").lower()
        if not _SHA256_HEX.fullmatch(digits):
            raise ValueError("a SHA-256 fingerprint is 64 hex digits (colons allowed)")
        return digits

    @property
    def key(self) -> str:
        return f"{self.application}|{self.facility}"

    def msa_code(self, code: str) -> str:
        """MSA-1 of an original-mode ACK to this sender for our code AA, AE or AR."""
        return next((theirs for ours, theirs in self.ack_codes.items() if ours == code), code)

    def our_code(self, msa_code: str) -> str:
        """Back from MSA-1 (as this sender's ack_codes wrote it) to AA, AE or AR; the first of
        them when several share one code."""
        for ours in ("AA", "AE", "AR"):
            if self.msa_code(ours) == msa_code:
                return ours
        return msa_code


class Hl7Limits(_Strict):
    """What one message may hold (the senders file's ``limits``); beyond them, AE naming the limit.

    They keep the work per message linear and small, and every stored key within what an index
    entry can hold on PostgreSQL. The frame itself is limited by MllpSettings.max_frame_bytes.
    """

    max_segments: int = Field(default=1000, ge=1)  # segments per message: ERR-3 100
    max_repetitions: int = Field(default=100, ge=1)  # repetitions of one field: ERR-3 102
    # characters of one field; OBX-5 is bounded by the frame only (an ED report may be large)
    max_field_length: int = Field(default=65_536, ge=1)
    # characters of a value that becomes a stored key: MSH-3, MSH-4, MSH-10, OBR-2, OBR-3,
    # SPM-2 and PID-3 CX-1 (HL7 v2.7 gives ST and EI values 199 characters): ERR-3 102
    max_key_length: int = Field(default=199, ge=1)


class SenderDirectory(_Strict):
    accept_unknown: bool = False  # an unknown sender gets AR (True: read with defaults)
    limits: Hl7Limits = Field(default_factory=Hl7Limits)
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
        """The senders file; SendersFileError names what cannot be used in it."""
        if path is None:
            return cls(accept_unknown=True)  # no senders file: every sender, with defaults
        try:
            return cls.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
        except ValidationError as exc:
            raise SendersFileError(f"{path}: {_problems(exc)}") from None
        except yaml.YAMLError as exc:
            raise SendersFileError(f"{path}: not YAML ({type(exc).__name__})") from None


class SendersFileError(ValueError):
    """A senders file that cannot be used, in one line: the file, each key and its problem."""


def _problems(error: ValidationError) -> str:
    """e.g. `senders.0.draw_time_field: Input should be 'SPM-17', …` (values left out)."""
    return "; ".join(
        f"{'.'.join(map(str, item['loc']))}: {item['msg']}"
        for item in error.errors(include_input=False)
    )
