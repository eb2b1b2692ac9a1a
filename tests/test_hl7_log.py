"""One log line per HL7 message, refusals included, with no patient data (issue 18); and the MLLP
listener's limits as settings that change what a real `serve` does."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_settings
from gateway.mllp.client import send
from gateway.server import mllp_settings
from tests.test_serve import free_port, start

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
REGISTRY = (ROOT / "fixtures" / "registry" / "example.yaml").read_text()
ORU = (ROOT / "fixtures" / "hl7" / "oru-v251-loinc-anc.hl7").read_bytes()
# What the fixture holds of its patient, none of which may reach a log line.
PATIENT_DATA = ("MRN123", "Doe", "Jane", "19800101")
FRAME_LIMIT = 4096


def variant(control_id: str, *, kind: bytes = b"ORU^R01^ORU_R01", pad: int = 0) -> bytes:
    """The fixture under another control id (and message type), optionally padded by an NTE."""
    message = ORU.replace(b"MSG0001", control_id.encode()).replace(b"ORU^R01^ORU_R01", kind)
    return message + (b"NTE|1||" + b"x" * pad + b"\r" if pad else b"")


def hl7_lines(output: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [line for line in lines if line["msg"] == "hl7 message"]


def test_each_message_and_each_refusal_is_one_line_without_patient_data(tmp_path: Path) -> None:
    mllp_port = free_port()
    gateway = start(
        tmp_path,
        "--mllp-port", str(mllp_port),
        "--clock", "message",
        "--timezone", "UTC",
        "--mllp-max-frame-bytes", str(FRAME_LIMIT),
        "--mllp-idle-timeout-seconds", "1",
    )  # fmt: skip
    try:
        loaded = gateway.http.post(
            "/admin/registry", content=REGISTRY, headers={"Content-Type": "application/yaml"}
        )
        assert loaded.status_code == 200
        messages = [
            variant("LOG-1"),  # accepted
            variant("LOG-1"),  # the resend: duplicate
            variant("LOG-2", kind=b"ORM^O01^ORM_O01"),  # AR 200: refused before the store
            variant("LOG-3", pad=FRAME_LIMIT),  # over the frame limit: AE 207
        ]
        acks = asyncio.run(send("127.0.0.1", mllp_port, messages))
        assert [ack.split(b"\r")[1][:6] for ack in acks] == [
            b"MSA|AA",
            b"MSA|AA",
            b"MSA|AR",
            b"MSA|AE",
        ]
        assert b"FRAME_TOO_LARGE" in acks[3]
        idle_closed = closed_when_idle(mllp_port, within=5)
    finally:
        assert gateway.terminate() == 0
    output = gateway.output()
    lines = hl7_lines(output)
    assert [(line["control_id"], line["disposition"], line["ack_code"]) for line in lines] == [
        ("LOG-1", "accepted", "AA"),
        ("LOG-1", "duplicate", "AA"),
        ("LOG-2", "rejected", "AR"),
        ("LOG-3", "rejected", "AE"),
    ]
    for line in lines:
        assert line["level"] == "INFO" and line["sender"] == "LAB|GENERAL HOSP"
        assert line["latency_ms"] >= 0 and line["ack_sent"] is True
    assert [line["message_type"] for line in lines] == ["ORU^R01", "ORU^R01", "ORM^O01", "ORU^R01"]
    assert lines[2]["refusal"] == "200" and lines[3]["refusal"] == "207 FRAME_TOO_LARGE"
    assert "refusal" not in lines[0]
    assert not [value for value in PATIENT_DATA if value in output], output
    assert idle_closed  # --mllp-idle-timeout-seconds 1, not the default 600


def closed_when_idle(port: int, within: float) -> bool:
    """Whether the listener closes a silent connection within ``within`` seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=within) as sock:
        started = time.monotonic()
        try:
            data = sock.recv(1)
        except TimeoutError:
            return False
        return data == b"" and time.monotonic() - started < within


# --- the settings (in process) ----------------------------------------------------------------


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in [key for key in os.environ if key.startswith("REMS_")]:
        monkeypatch.delenv(key)
    return monkeypatch


def test_the_mllp_limits_are_settings_passed_to_the_listener(
    environment: pytest.MonkeyPatch,
) -> None:
    environment.setenv("REMS_MLLP_MAX_CONNECTIONS", "12")
    settings = load_settings(
        {
            "mllp_max_frame_bytes": 65536,
            "mllp_idle_timeout_seconds": 30,
            "mllp_tls_handshake_timeout_seconds": 5,
        }
    )
    mllp = mllp_settings(settings)
    assert (mllp.max_frame_bytes, mllp.max_connections) == (65536, 12)
    assert (mllp.idle_timeout_s, mllp.tls_handshake_timeout_s) == (30, 5)
    defaults = mllp_settings(load_settings({"mllp_max_connections": None}))
    assert (defaults.max_frame_bytes, defaults.idle_timeout_s) == (1_048_576, 600)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("mllp_max_frame_bytes", 100),
        ("mllp_max_connections", 0),
        ("mllp_idle_timeout_seconds", 0),
        ("mllp_tls_handshake_timeout_seconds", 9999),
    ],
)
def test_absurd_mllp_limits_stop_serve_naming_the_setting(
    environment: pytest.MonkeyPatch, setting: str, value: int
) -> None:
    with pytest.raises(ConfigError, match=setting):
        load_settings({setting: value})
