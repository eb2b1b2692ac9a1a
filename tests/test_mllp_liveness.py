"""Nothing blocks the loop (issue 11): worst-case frames at the frame limit on one connection of a
real `serve` process, while another connection's ORU and `/healthz` are answered within a second.

A liveness bound, not a benchmark: before issue 11, one of these frames held the loop for 36 s.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx

from gateway.mllp.client import send
from tests.test_mllp_serve import REGISTRY, ROOT
from tests.test_serve import free_port, start

ORU = (ROOT / "fixtures" / "hl7" / "oru-v251-loinc-anc.hl7").read_bytes()
FRAME_LIMIT = 1_048_576
MSH = ORU.split(b"\r", 1)[0]
LIVENESS_S = 1.0


def worst_cases() -> list[bytes]:
    """Frames just under the frame limit that are each costly in a different way."""
    room = FRAME_LIMIT - len(ORU) - 100
    many_obx = b"".join(
        b"OBX|%d|NM|751-8^ANC^LN||%d|10*3/uL|||||F|||20211201071500-0500\r" % (i, i % 9)
        for i in range(1, 996)
    )
    return [
        ORU.replace(b"MRN123^^^GH", b"1~" * (room // 2) + b"MRN123^^^GH"),  # PID-3 repetitions
        ORU + b"NTE|1\r" * (room // 6),  # segments
        ORU + b"OBX" + b"|" * room + b"\r",  # fields
        ORU + b"NTE|1||" + b"\\X41\\" * (room // 5) + b"\r",  # escape sequences
        ORU + b"NTE|1||" + b"^&" * (room // 2) + b"\r",  # components and subcomponents
        ORU.replace(b"MSG0001", b"MSG-MANY") + many_obx,  # results, at the segment limit
    ]


def hammer(port: int, frames: list[bytes], stop: threading.Event, acks: list[bytes]) -> None:
    """Send the worst cases round and round on one connection until told to stop."""
    while not stop.is_set():
        acks.extend(asyncio.run(send("127.0.0.1", port, frames, timeout_s=60)))


def timed(work: object) -> float:
    started = time.perf_counter()
    work()  # type: ignore[operator]
    return time.perf_counter() - started


def test_worst_case_frames_never_stall_other_connections_or_healthz(tmp_path: Path) -> None:
    mllp_port = free_port()
    gateway = start(tmp_path, "--mllp-port", str(mllp_port), "--timezone", "UTC")
    stop, acks = threading.Event(), []
    try:
        headers = {"Content-Type": "application/yaml"}
        assert gateway.http.post("/admin/registry", content=REGISTRY, headers=headers).is_success
        frames = worst_cases()
        assert all(len(f) <= FRAME_LIMIT for f in frames)
        sender = threading.Thread(target=hammer, args=(mllp_port, frames, stop, acks))
        sender.start()
        waits: list[tuple[str, float]] = []
        for round_ in range(6):
            time.sleep(0.2)
            ordinary = ORU.replace(b"MSG0001", b"LIVE%d" % round_)
            oru = timed(lambda m=ordinary: asyncio.run(send("127.0.0.1", mllp_port, [m])))
            health = timed(lambda: httpx.get(f"{gateway.url}/healthz", timeout=5))
            waits += [("oru", oru), ("healthz", health)]
        stop.set()
        sender.join(120)
        assert not sender.is_alive()
        assert max(seconds for _, seconds in waits) < LIVENESS_S, waits
        assert len(acks) >= len(frames), "the worst cases were sent at least once"
        codes = {ack.split(b"\r")[1].split(b"|")[1] for ack in acks}
        assert b"AR" not in codes, codes
    finally:
        stop.set()
        assert gateway.terminate() == 0
