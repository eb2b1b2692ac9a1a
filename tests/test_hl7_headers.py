"""Headers as senders write them (docs/contracts.md §4), and `rems-gateway send` against a real
`serve` over real sockets: MSH-2 of three characters, a leading byte order mark, MSH-15/16 and
`--timeout`."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.mllp.intake import Hl7Intake
from mappings.hl7v2.senders import SenderConfig, SenderDirectory
from tests.conftest import run, sqlite_only
from tests.test_hl7_intake import NOW, errors, fixture, intake
from tests.test_serve import Gateway, free_port, start

__all__ = ["intake"]  # the fixture, shared with tests/test_hl7_intake.py
# Headers as read, and `send` against a real serve: what the intake stores, and a resend answered
# from the store, are test_hl7_intake's on both backends (conftest: sqlite_only).
pytestmark = sqlite_only

ROOT = Path(__file__).parent.parent
FIXTURES = ROOT / "fixtures" / "hl7"
ANALYSER = "oru-v251-analyser-spm-collection.hl7"  # MSH|^~&|, from XN-LINK


def test_three_encoding_characters_are_taken_from_a_tolerant_sender(intake: Hl7Intake) -> None:
    received = run(intake.receive(fixture(ANALYSER), NOW))
    assert received.code == "AA", received.ack
    assert received.outcome is not None and [r.anc for r in received.outcome.results] == [1900]


def test_three_encoding_characters_are_ae_102_for_a_strict_sender(service: object) -> None:
    strict = SenderDirectory(senders=[SenderConfig(application="XN-LINK", validation="strict")])
    received = run(Hl7Intake(service, strict).receive(fixture(ANALYSER), NOW))  # type: ignore[arg-type]
    assert received.code == "AE"
    assert errors(received.ack) == [("MSH^1^2", "102", "E", "STRICT_VALIDATION")]


def test_a_resend_with_a_byte_order_mark_and_a_new_msh_7_gets_the_stored_ack(
    intake: Hl7Intake,
) -> None:
    message = fixture("oru-v251-utf8-bom.hl7")
    first = run(intake.receive(message, NOW))
    resent = message.replace(b"|20211201091500-0500|", b"|20211201101500-0500|")
    assert resent != message
    again = run(intake.receive(resent, NOW))
    assert first.code == "AA", first.ack
    assert (again.ack, again.disposition) == (first.ack, "duplicate")


# --- rems-gateway send, against a real gateway -------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, int]]:
    mllp_port = free_port()
    folder = tmp_path_factory.mktemp("send")
    running = start(
        folder, "--mllp-port", str(mllp_port), "--clock", "message", "--timezone", "UTC"
    )
    registry = (ROOT / "fixtures" / "registry" / "example.yaml").read_text()
    loaded = running.http.post(
        "/admin/registry", content=registry, headers={"Content-Type": "application/yaml"}
    )
    assert loaded.status_code == 200
    yield running, mllp_port
    running.terminate()


def send(port: int, *files: Path, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    options = ["--timeout", str(timeout)] if timeout is not None else []
    command = [sys.executable, "-m", "gateway", "send", *map(str, files), *options]
    return subprocess.run(
        [*command, "--to", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def accepted(gateway: Gateway) -> float:
    """How many ORU^R01 the gateway has accepted (its metrics)."""
    line = 'rems_hl7_messages_total{disposition="accepted",message_type="ORU^R01"} '
    for text in gateway.http.get("/metrics").text.splitlines():
        if text.startswith(line):
            return float(text.removeprefix(line))
    return 0.0


def eventually_accepted(gateway: Gateway, count: float) -> None:
    deadline = time.monotonic() + 10
    while accepted(gateway) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert accepted(gateway) >= count


def with_header(
    tmp_path: Path, name: str, control_id: str, msh_15_16: str, msh_11: str = "P"
) -> Path:
    """The NE fixture's message with its own control id, MSH-11 and MSH-15/16."""
    text = (FIXTURES / "oru-v251-enhanced-no-ack.hl7").read_bytes()
    header = f"|{control_id}|{msh_11}|2.5.1|||{msh_15_16}".encode()
    path = tmp_path / name
    path.write_bytes(text.replace(b"|MSG0008|P|2.5.1|||NE|AL", header))
    return path


def test_send_takes_a_file_that_starts_with_a_byte_order_mark(gateway: tuple[Gateway, int]) -> None:
    sent = send(gateway[1], FIXTURES / "oru-v251-utf8-bom.hl7")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "MSA|AA|MSG0007" in sent.stdout


def test_send_takes_three_encoding_characters(gateway: tuple[Gateway, int]) -> None:
    sent = send(gateway[1], FIXTURES / ANALYSER)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "MSA|AA|XN20211201084410" in sent.stdout


def test_send_does_not_wait_for_an_ack_msh_15_ne_says_will_not_come(
    gateway: tuple[Gateway, int],
) -> None:
    """MSH-15 NE with MSH-16 AL: the gateway sends no accept ACK and no application ACK."""
    running, port = gateway
    before = accepted(running)
    started = time.monotonic()
    sent = send(port, FIXTURES / "oru-v251-enhanced-no-ack.hl7", timeout=30)
    assert time.monotonic() - started < 15  # not the 30 s timeout
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "MSG0008: no ACK (MSH-15 NE: none is sent)" in sent.stdout
    eventually_accepted(running, before + 1)  # taken all the same


def test_an_ne_message_before_another_leaves_the_next_ack_to_the_next_message(
    gateway: tuple[Gateway, int], tmp_path: Path
) -> None:
    quiet = with_header(tmp_path, "quiet.hl7", "SEND-NE-1", "NE|NE")
    loud = with_header(tmp_path, "loud.hl7", "SEND-AL-1", "AL|NE")
    sent = send(gateway[1], quiet, loud, timeout=30)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    lines = sent.stdout.splitlines()
    assert lines[0] == "SEND-NE-1: no ACK (MSH-15 NE: none is sent)"
    assert "MSA|CA|SEND-AL-1" in lines


def test_msh_15_su_is_answered_when_accepted(gateway: tuple[Gateway, int], tmp_path: Path) -> None:
    sent = send(gateway[1], with_header(tmp_path, "su.hl7", "SEND-SU-1", "SU|AL"), timeout=30)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "MSA|CA|SEND-SU-1" in sent.stdout


def test_msh_15_er_silence_is_acceptance_and_an_error_is_answered(
    gateway: tuple[Gateway, int], tmp_path: Path
) -> None:
    quiet = send(gateway[1], with_header(tmp_path, "er.hl7", "SEND-ER-1", "ER|NE"), timeout=1)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert "SEND-ER-1: no ACK (MSH-15 ER: accepted)" in quiet.stdout
    training = with_header(tmp_path, "er-t.hl7", "SEND-ER-2", "ER|NE", msh_11="T")
    refused = send(gateway[1], training, timeout=30)
    assert refused.returncode == 1
    assert "MSA|CR|SEND-ER-2" in refused.stdout  # AR 202: the production gateway takes P only


def test_er_and_su_messages_are_settled_by_the_next_ack_in_order_without_waiting(
    gateway: tuple[Gateway, int], tmp_path: Path
) -> None:
    """The listener answers in order: an ACK that must come settles the ER/SU messages before it
    (each ACK goes to the message its MSA-2 names), so nothing waits for the timeout."""
    messages = [
        with_header(tmp_path, "1.hl7", "SEND-PIPE-1", "ER|NE"),  # accepted: no ACK
        with_header(tmp_path, "2.hl7", "SEND-PIPE-2", "ER|NE", msh_11="T"),  # refused: CR
        with_header(tmp_path, "3.hl7", "SEND-PIPE-3", "SU|NE", msh_11="D"),  # refused: no ACK
        with_header(tmp_path, "4.hl7", "SEND-PIPE-4", "SU|NE"),  # accepted: CA
        with_header(tmp_path, "5.hl7", "SEND-PIPE-5", "AL|NE"),  # CA
    ]
    started = time.monotonic()
    sent = send(gateway[1], *messages, timeout=30)
    assert time.monotonic() - started < 15  # no 30 s wait for any of them
    assert sent.returncode == 1  # messages 2 and 3 were refused
    answers = [line for line in sent.stdout.splitlines() if line.startswith(("MSA", "SEND-"))]
    assert answers == [
        "SEND-PIPE-1: no ACK (MSH-15 ER: accepted)",
        "MSA|CR|SEND-PIPE-2",
        "SEND-PIPE-3: no ACK (MSH-15 SU: not accepted)",
        "MSA|CA|SEND-PIPE-4",
        "MSA|CA|SEND-PIPE-5",
    ]


def test_er_messages_at_the_end_are_waited_for_once(
    gateway: tuple[Gateway, int], tmp_path: Path
) -> None:
    messages = [with_header(tmp_path, f"{n}.hl7", f"SEND-TAIL-{n}", "ER|NE") for n in (1, 2, 3)]
    started = time.monotonic()
    sent = send(gateway[1], *messages, timeout=2)
    assert time.monotonic() - started < 5.5  # one wait of 2 s, not three
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert sent.stdout.splitlines() == [
        f"SEND-TAIL-{n}: no ACK (MSH-15 ER: accepted)" for n in (1, 2, 3)
    ]


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP listener that takes the bytes and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    connections: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            connections.append(connection)

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for connection in connections:
        connection.close()


def test_send_gives_up_after_timeout_with_a_clear_error(silent_listener: int) -> None:
    started = time.monotonic()
    sent = send(silent_listener, FIXTURES / "oru-v251-loinc-anc.hl7", timeout=1)
    assert time.monotonic() - started < 15
    assert sent.returncode == 1
    assert "send failed: no ACK to MSG0001 (message 1 of 1) within 1 s" in sent.stderr
    assert "Traceback" not in sent.stderr


def test_send_timeout_must_be_positive() -> None:
    sent = send(free_port(), FIXTURES / "oru-v251-loinc-anc.hl7", timeout=0)
    assert sent.returncode == 2 and "--timeout" in sent.stderr
