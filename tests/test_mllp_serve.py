"""HL7 v2 over MLLP into a real `serve` process: stored before the ACK, duplicates answered alike."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.mllp.client import send
from tests.test_serve import free_port, start

ROOT = Path(__file__).parent.parent
REGISTRY = (ROOT / "fixtures" / "registry" / "example.yaml").read_text()


def test_an_oru_over_mllp_is_acknowledged_after_it_is_stored(tmp_path: Path) -> None:
    mllp_port = free_port()
    gateway = start(
        tmp_path, "--mllp-port", str(mllp_port), "--clock", "message", "--timezone", "UTC"
    )
    try:
        loaded = gateway.http.post(
            "/admin/registry", content=REGISTRY, headers={"Content-Type": "application/yaml"}
        )
        assert loaded.status_code == 200
        message = (ROOT / "fixtures" / "hl7" / "oru-v251-loinc-anc.hl7").read_bytes()
        first, again = asyncio.run(send("127.0.0.1", mllp_port, [message, message]))
        assert first.split(b"\r")[1].startswith(b"MSA|AA|MSG0001")
        assert b"ANC_BELOW_THRESHOLD" in first
        assert again == first  # the stored ACK, not a second processing
        metrics = gateway.http.get("/metrics").text
        assert 'rems_hl7_acks_total{code="AA"} 2.0' in metrics
        by_disposition = 'rems_hl7_messages_total{{disposition="{}",message_type="ORU^R01"}} 1.0'
        assert by_disposition.format("accepted") in metrics
        assert by_disposition.format("duplicate") in metrics  # the resend, from the stored ACK
        assert "rems_mllp_open_connections" in metrics
    finally:
        assert gateway.terminate() == 0
    assert "MRN123" not in gateway.output() and "Doe" not in gateway.output()


def test_rems_gateway_send_prints_the_acks(tmp_path: Path) -> None:
    import subprocess
    import sys

    mllp_port = free_port()
    gateway = start(tmp_path, "--mllp-port", str(mllp_port))
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "send",
                str(ROOT / "fixtures" / "hl7" / "oru-no-anc.hl7"),
                "--to",
                f"127.0.0.1:{mllp_port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        gateway.terminate()
    assert result.returncode == 0, result.stderr
    assert "MSA|AA|K-0001" in result.stdout
