"""Property tests over mutated and arbitrary HL7 v2 input (issue 11), in process and over a real
socket: with the store up no answer is AR 207, every frame gets exactly one ACK (none only where
MSH-15 asks for none), and every ACK is one MLLP frame with one MSH and one MSA.

Bounded for CI (derandomized, a few hundred examples); tests/fuzz/README.md runs more.
"""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.app.service import RemsService
from gateway.mllp.client import send
from gateway.mllp.intake import Hl7Intake
from gateway.mllp.server import END_BLOCK, START_BLOCK, MllpSettings
from tests.conftest import run
from tests.fuzz.mutations import SEGMENTS, msh_15, mutated_messages
from tests.test_hl7_intake import LOCAL, NOW, intake
from tests.test_hl7_senders import listening

__all__ = ["intake"]  # the fixture, shared with tests/test_hl7_intake.py

BOUNDED = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CONTROL_IDS = itertools.count()
ANY_INPUT = mutated_messages() | st.binary(max_size=400)
#: The campaign's findings, always among the examples: the same ANC OBX twice, a bad MSH-7.
ANC_TWICE = b"\r".join([*SEGMENTS[:4], *SEGMENTS[3:]]) + b"\r"
BAD_MSH_7 = b"\r".join(SEGMENTS).replace(b"081500-0500", b"081500+2500", 1) + b"\r"


def unique_control_id(message: bytes) -> bytes:
    """Most examples under a control id of their own, so each is processed, not a duplicate."""
    return message.replace(b"|MSG0001|", b"|FUZZ%d|" % next(CONTROL_IDS), 1)


def assert_well_formed(ack: str) -> None:
    """One MLLP frame (as the listener frames it) holding exactly one MSH and one MSA."""
    framed = START_BLOCK + ack.encode("utf-8") + END_BLOCK
    assert framed.count(START_BLOCK) == 1 and framed.count(END_BLOCK) == 1, repr(ack)
    assert not any(ord(c) < 32 and c != "\r" for c in ack), repr(ack)
    names = [segment[:3] for segment in ack.split("\r") if segment]
    assert names[:2] == ["MSH", "MSA"] and set(names[2:]) <= {"ERR"}, repr(ack)


def asked_for_none(message: bytes, code: str) -> bool:
    """MSH-15 (HL7 table 0155) asks for no acknowledgment of this outcome."""
    policy = msh_15(message).split(b"^")[0].upper()
    return (
        policy == b"NE" or (policy == b"ER" and code == "AA") or (policy == b"SU" and code != "AA")
    )


@BOUNDED
@given(ANY_INPUT)
@example(ANC_TWICE)
@example(BAD_MSH_7)
def test_any_input_is_answered_once_well_formed_and_never_ar_207(
    intake: Hl7Intake, message: bytes
) -> None:
    message = unique_control_id(message)
    received = run(intake.receive(message, NOW))
    assert received.disposition != "error" and "STORE_UNAVAILABLE" not in (received.ack or "")
    if received.ack is None:
        assert asked_for_none(message, received.code), message
    else:
        assert_well_formed(received.ack)


@settings(BOUNDED, max_examples=60)
@given(st.lists(mutated_messages(enhanced=False), min_size=1, max_size=5))
def test_over_a_real_socket_each_frame_gets_exactly_one_ack_in_order(
    service: RemsService, messages: list[bytes]
) -> None:
    # 0x1C 0x0D ends a frame (contracts §4): a message holding it is two frames, not one
    frames = [unique_control_id(m).replace(END_BLOCK, b"\x1c") for m in messages]

    async def exchange() -> list[bytes]:
        async with listening(service, LOCAL, MllpSettings(port=0)) as listener:
            return await send("127.0.0.1", listener.server.port, frames, timeout_s=10)

    acks = asyncio.run(exchange())
    assert len(acks) == len(frames)
    for ack in acks:
        assert b"\x0b" not in ack and b"\x1c" not in ack
        assert_well_formed(ack.decode("utf-8"))
        assert b"STORE_UNAVAILABLE" not in ack
