"""MLLP transport: framing, ordering, limits, stop, TLS and mutual TLS, on real loopback sockets."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from gateway.mllp.client import MllpClientError, client_tls, send
from gateway.mllp.server import (
    BareEndBlock,
    CloseConnection,
    Frame,
    Incomplete,
    Junk,
    MllpDecoder,
    MllpServer,
    MllpSettings,
    Oversize,
    PeerInfo,
    frame,
)

SETTINGS = MllpSettings(port=0, idle_timeout_s=5.0)
MSG = b"MSH|^~\\&|LAB|HOSP|REMS|GW|20240101120000||ORU^R01|CTRL1|P|2.5.1\rPID|1||MRN123^^^HOSP^MR\r"


@dataclass
class Recorder:
    """Handler and event sink: echoes `ACK:` + the message, records what it saw."""

    delay_s: float = 0.0
    fail_on: bytes | None = None
    messages: list[bytes] = field(default_factory=list)
    peers: list[PeerInfo] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def handler(self, message: bytes, peer: PeerInfo) -> bytes | None:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.started.set()
        try:
            self.messages.append(message)
            self.peers.append(peer)
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.fail_on is not None and self.fail_on in message:
                raise ValueError(f"cannot handle {message!r}")  # content in the message: not logged
            if message == b"SILENT":
                return None
            if message == b"CLOSE":
                raise CloseConnection("asked by the test")
            return b"ACK:" + message
        finally:
            self.active -= 1

    def on_event(self, name: str, data: dict[str, Any]) -> None:
        self.events.append((name, data))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [data for event, data in self.events if event == name]


@asynccontextmanager
async def running(
    recorder: Recorder,
    settings: MllpSettings = SETTINGS,
    oversize_reply: Callable[[bytes], bytes | None] | None = None,
) -> AsyncIterator[MllpServer]:
    server = MllpServer(
        settings, recorder.handler, recorder.on_event, oversize_reply=oversize_reply
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace_s=2.0)


async def read_frames(
    reader: asyncio.StreamReader, count: int, timeout_s: float = 5.0
) -> list[bytes]:
    decoder = MllpDecoder(1 << 20)
    frames: list[bytes] = []
    async with asyncio.timeout(timeout_s):
        while len(frames) < count:
            data = await reader.read(65536)
            assert data, f"connection closed after {len(frames)} of {count} replies"
            frames += [e.payload for e in decoder.feed(data) if isinstance(e, Frame)]
    return frames


async def expect_closed(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                data = await reader.read(65536)
            except ConnectionResetError:
                return
            if not data:
                return


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.005)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 10))


# --- the decoder alone ------------------------------------------------------------------------


def test_decoder_byte_by_byte_merged_junk_and_split_end_block() -> None:
    stream = b"\x00\r\n" + frame(b"one") + frame(b"two") + b"xx" + frame(b"three")
    decoder = MllpDecoder(100)
    events = [e for i in range(len(stream)) for e in decoder.feed(stream[i : i + 1])]
    assert events == [Junk(3), Frame(b"one"), Frame(b"two"), Junk(2), Frame(b"three")]
    assert MllpDecoder(100).feed(stream) == events
    assert decoder.finish() == []


def test_decoder_oversize_discards_to_end_block_and_keeps_the_head() -> None:
    big = b"MSH|" + b"x" * 10_000
    stream = frame(big) + frame(b"ok")
    for chunk in (len(stream), 7, 1):
        decoder = MllpDecoder(100)
        events = [
            e for i in range(0, len(stream), chunk) for e in decoder.feed(stream[i : i + chunk])
        ]
        assert events == [Oversize(len(big), big[:4096]), Frame(b"ok")], chunk
    # exactly at the limit is fine, one byte over is not, whatever the split
    for chunk in (1, 2, 3, 1000):
        stream = frame(b"a" * 100) + frame(b"b" * 101)
        decoder = MllpDecoder(100)
        events = [
            e for i in range(0, len(stream), chunk) for e in decoder.feed(stream[i : i + chunk])
        ]
        assert events == [Frame(b"a" * 100), Oversize(101, b"b" * 101)], chunk


def test_decoder_reports_bare_fs_and_unfinished_frames() -> None:
    decoder = MllpDecoder(100)
    assert decoder.feed(b"\x0bab\x1cc\x1cd\x1c\r") == [BareEndBlock(), Frame(b"ab\x1cc\x1cd")]
    assert decoder.feed(b"\x0bhalf") == []
    assert decoder.finish() == [Incomplete(4)]
    assert decoder.feed(b"junk") == []
    assert decoder.finish() == [Junk(4)]


# --- the server on loopback -------------------------------------------------------------------


def test_round_trip_with_the_client_and_peer_info() -> None:
    async def body() -> None:
        recorder = Recorder()
        async with running(recorder) as server:
            replies = await send("127.0.0.1", server.port, [MSG, b"second"])
            assert replies == [b"ACK:" + MSG, b"ACK:second"]
            assert recorder.messages == [MSG, b"second"]
            peer = recorder.peers[0]
            assert peer.host == "127.0.0.1" and peer.port > 0
            assert peer.tls_subject is None and peer.tls_fingerprint_sha256 is None
            await wait_until(lambda: server.open_connections == 0)
        names = [name for name, _ in recorder.events]
        assert names == ["connection_opened", "message", "message", "connection_closed"]
        assert recorder.named("message")[0]["bytes"] == len(MSG)
        assert recorder.named("connection_closed")[0]["messages"] == 2

    run(body)


def test_frame_split_byte_by_byte() -> None:
    async def body() -> None:
        recorder = Recorder()
        async with running(recorder) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            for byte in frame(b"MSH|split"):
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.002)
            assert await read_frames(reader, 1) == [b"ACK:MSH|split"]
            writer.close()
        assert recorder.messages == [b"MSH|split"]

    run(body)


def test_merged_frames_in_one_write_and_junk_before_start() -> None:
    async def body() -> None:
        recorder = Recorder()
        async with running(recorder) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"\x00\x00\r\n" + frame(b"a") + frame(b"b") + b"noise" + frame(b"c"))
            assert await read_frames(reader, 3) == [b"ACK:a", b"ACK:b", b"ACK:c"]
            writer.close()
        assert recorder.messages == [b"a", b"b", b"c"]
        assert [d["bytes"] for d in recorder.named("junk_skipped")] == [4, 5]

    run(body)


def test_oversize_frame_gets_the_hook_reply_and_the_connection_goes_on() -> None:
    async def body() -> None:
        recorder = Recorder()
        heads: list[bytes] = []

        def nak(head: bytes) -> bytes:
            heads.append(head)
            return b"AR:" + head[:8]

        settings = replace(SETTINGS, max_frame_bytes=1000)
        async with running(recorder, settings, oversize_reply=nak) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            big = b"MSH|big|" + b"x" * 20_000
            writer.write(frame(big)[:5000])  # the oversize frame arrives in pieces ...
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(frame(big)[5000:] + frame(b"MSH|small"))  # ... then a normal one
            assert await read_frames(reader, 2) == [b"AR:MSH|big|", b"ACK:MSH|small"]
            writer.close()
        assert recorder.messages == [b"MSH|small"]  # the handler never saw the big one
        assert heads == [big[:4096]]
        assert recorder.named("frame_too_large")[0]["bytes"] == len(big)

    run(body)


def test_oversize_frame_without_hook_gets_no_reply_and_keeps_the_connection() -> None:
    async def body() -> None:
        recorder = Recorder()
        async with running(recorder, replace(SETTINGS, max_frame_bytes=10)) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(frame(b"y" * 11) + frame(b"z" * 10))
            assert await read_frames(reader, 1) == [b"ACK:" + b"z" * 10]
            writer.close()
        assert recorder.messages == [b"z" * 10]

    run(body)


def test_many_messages_on_one_connection_handled_strictly_in_order() -> None:
    async def body() -> None:
        recorder = Recorder(delay_s=0.001)
        messages = [f"MSH|{n}".encode() for n in range(200)]
        async with running(recorder) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"".join(frame(m) for m in messages))  # pipelined: all at once
            replies = await read_frames(reader, len(messages))
            writer.close()
        assert replies == [b"ACK:" + m for m in messages]
        assert recorder.messages == messages
        assert recorder.max_active == 1  # message n+1 was not handled before n's reply

    run(body)


def test_handler_returning_none_sends_nothing_and_the_next_reply_follows() -> None:
    async def body() -> None:
        recorder = Recorder()
        async with running(recorder) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(frame(b"SILENT") + frame(b"after"))
            assert await read_frames(reader, 1) == [b"ACK:after"]
            writer.close()

    run(body)


def test_handler_raising_close_connection_sends_nothing_and_closes_that_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        recorder = Recorder()
        async with running(recorder) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(frame(b"CLOSE") + frame(b"never handled"))
            async with asyncio.timeout(5):
                assert await reader.read() == b""  # closed, and no reply came before
            writer.close()
            assert await send("127.0.0.1", server.port, [b"next"]) == [b"ACK:next"]
        assert recorder.messages == [b"CLOSE", b"next"]
        assert recorder.named("handler_closed")[0]["reason"] == "asked by the test"
        closed = recorder.named("connection_closed")[0]
        assert (closed["reason"], closed["messages"]) == ("handler_closed", 0)

    with caplog.at_level(logging.INFO, logger="gateway.mllp.server"):
        run(body)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("without a reply" in r.getMessage() for r in caplog.records)


def test_connections_are_served_concurrently() -> None:
    async def body() -> None:
        recorder = Recorder(delay_s=0.2)
        async with running(recorder) as server:
            started = time.monotonic()
            results = await asyncio.gather(
                *(send("127.0.0.1", server.port, [f"c{n}".encode()]) for n in range(10))
            )
            assert time.monotonic() - started < 1.5
        assert sorted(r[0] for r in results) == sorted(f"ACK:c{n}".encode() for n in range(10))

    run(body)


def test_connection_cap_closes_extra_connections_immediately() -> None:
    async def body() -> None:
        recorder = Recorder()
        async with running(recorder, replace(SETTINGS, max_connections=2)) as server:
            first = await asyncio.open_connection("127.0.0.1", server.port)
            second = await asyncio.open_connection("127.0.0.1", server.port)
            await wait_until(lambda: server.open_connections == 2)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(frame(b"refused"))
            await expect_closed(reader)
            assert recorder.named("connection_refused") == [
                {
                    "reason": "max_connections",
                    "peer": recorder.named("connection_refused")[0]["peer"],
                }
            ]
            # the two admitted connections still work; freeing one admits a new one
            first[1].write(frame(b"one"))
            assert await read_frames(first[0], 1) == [b"ACK:one"]
            second[1].close()
            await wait_until(lambda: server.open_connections == 1)
            assert await send("127.0.0.1", server.port, [b"again"]) == [b"ACK:again"]
            first[1].close()
        assert b"refused" not in recorder.messages

    run(body)


def test_idle_timeout_closes_a_silent_connection_only() -> None:
    async def body() -> None:
        recorder = Recorder()
        async with running(recorder, replace(SETTINGS, idle_timeout_s=0.3)) as server:
            silent_reader, silent = await asyncio.open_connection("127.0.0.1", server.port)
            talk_reader, talker = await asyncio.open_connection("127.0.0.1", server.port)
            started = time.monotonic()
            for n in range(4):  # 0.6 s of traffic with gaps shorter than the timeout
                talker.write(frame(b"n%d" % n))
                assert await read_frames(talk_reader, 1) == [b"ACK:n%d" % n]
                await asyncio.sleep(0.15)
            await expect_closed(silent_reader, timeout_s=1.0)
            assert 0.25 < time.monotonic() - started < 1.5
            assert len(recorder.named("idle_timeout")) == 1
            talker.write(frame(b"still"))
            assert await read_frames(talk_reader, 1) == [b"ACK:still"]
            silent.close()
            talker.close()

    run(body)


def test_graceful_stop_finishes_the_message_in_flight() -> None:
    async def body() -> None:
        recorder = Recorder(delay_s=0.5)
        server = MllpServer(SETTINGS, recorder.handler, recorder.on_event)
        await server.start()
        port = server.port
        idle_reader, idle = await asyncio.open_connection("127.0.0.1", port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(frame(b"slow") + frame(b"queued"))
        await recorder.started.wait()
        stopping = asyncio.create_task(server.stop(grace_s=5.0))
        await asyncio.sleep(0.05)
        with pytest.raises(OSError):  # no longer accepting
            await asyncio.open_connection("127.0.0.1", port)
        await expect_closed(idle_reader, timeout_s=1.0)  # an idle connection is closed at once
        assert await read_frames(reader, 1) == [b"ACK:slow"]  # the reply in flight still arrives
        await expect_closed(reader)  # then the connection closes; "queued" is not handled
        await stopping
        assert recorder.messages == [b"slow"]
        assert server.open_connections == 0
        idle.close()
        writer.close()

    run(body)


def test_handler_exception_closes_that_connection_only_and_logs_no_content(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = b"PID|1||SECRET-MRN-998877^^^HOSP^MR|DOE^JANE"

    async def body() -> None:
        recorder = Recorder(fail_on=b"SECRET")
        async with running(recorder, replace(SETTINGS, max_frame_bytes=200)) as server:
            other = await asyncio.open_connection("127.0.0.1", server.port)
            with pytest.raises(MllpClientError) as failure:
                await send("127.0.0.1", server.port, [b"fine", secret, b"never sent"])
            assert failure.value.replies == [b"ACK:fine"]
            # the server and its other connections go on
            other[1].write(b"junk " + secret + frame(secret * 10) + frame(b"ok"))
            assert await read_frames(other[0], 1) == [b"ACK:ok"]
            other[1].close()
            assert await send("127.0.0.1", server.port, [b"next"]) == [b"ACK:next"]
        assert recorder.named("handler_error") == [
            {"peer": recorder.named("handler_error")[0]["peer"], "error": "ValueError"}
        ]

    with caplog.at_level(logging.DEBUG, logger="gateway.mllp.server"):
        run(body)
    assert any("handler failed" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        assert "SECRET" not in record.getMessage()
        assert "SECRET" not in repr(vars(record))


def test_keepalive_is_set_on_accepted_sockets() -> None:
    async def body() -> None:
        recorder = Recorder(delay_s=0.3)
        async with running(recorder) as server:
            task = asyncio.create_task(send("127.0.0.1", server.port, [b"x"]))
            await recorder.started.wait()
            (conn,) = server._connections
            sock = conn.writer.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            await task

    run(body)


# --- TLS --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_der: bytes
    rogue_cert: Path  # same subject, signed by another CA
    rogue_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca, rogue_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert(
        "lab.example", common_name="lab-analyzer", organization_name="General Hospital"
    )
    rogue = rogue_ca.issue_cert(
        "lab.example", common_name="lab-analyzer", organization_name="General Hospital"
    )
    paths = {name: tmp / f"{name}.pem" for name in ("ca", "sc", "sk", "cc", "ck", "rc", "rk")}
    ca.cert_pem.write_to_path(paths["ca"])
    server.cert_chain_pems[0].write_to_path(paths["sc"])
    server.private_key_pem.write_to_path(paths["sk"])
    client.cert_chain_pems[0].write_to_path(paths["cc"])
    client.private_key_pem.write_to_path(paths["ck"])
    rogue.cert_chain_pems[0].write_to_path(paths["rc"])
    rogue.private_key_pem.write_to_path(paths["rk"])
    return Pki(
        paths["ca"],
        paths["sc"],
        paths["sk"],
        paths["cc"],
        paths["ck"],
        ssl.PEM_cert_to_DER_cert(client.cert_chain_pems[0].bytes().decode()),
        paths["rc"],
        paths["rk"],
    )


def test_tls_round_trip(pki: Pki) -> None:
    async def body() -> None:
        recorder = Recorder()
        settings = replace(SETTINGS, tls_cert=pki.server_cert, tls_key=pki.server_key)
        async with running(recorder, settings) as server:
            tls = client_tls(pki.ca, None, None)
            assert await send("127.0.0.1", server.port, [MSG, b"2"], tls=tls) == [
                b"ACK:" + MSG,
                b"ACK:2",
            ]
            # a plain-TCP sender on the TLS port gets nothing and never reaches the handler
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(frame(b"plain"))
            await expect_closed(reader)
            writer.close()
        assert recorder.messages == [MSG, b"2"]
        assert recorder.peers[0].tls_subject is None  # no client certificate asked for
        assert len(recorder.named("tls_handshake_failed")) == 1

    run(body)


def test_mutual_tls_accepts_a_client_certificate_from_the_ca(pki: Pki) -> None:
    async def body() -> None:
        recorder = Recorder()
        settings = replace(
            SETTINGS, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca
        )
        async with running(recorder, settings) as server:
            tls = client_tls(pki.ca, pki.client_cert, pki.client_key)
            assert await send("127.0.0.1", server.port, [MSG], tls=tls) == [b"ACK:" + MSG]
        peer = recorder.peers[0]
        assert peer.tls_subject is not None and "CN=lab-analyzer" in peer.tls_subject
        assert "O=General Hospital" in peer.tls_subject
        assert peer.tls_fingerprint_sha256 == hashlib.sha256(pki.client_der).hexdigest()

    run(body)


@pytest.mark.parametrize("client", ["no certificate", "certificate from another CA"])
def test_mutual_tls_refuses_other_clients(pki: Pki, client: str) -> None:
    async def body() -> None:
        recorder = Recorder()
        settings = replace(
            SETTINGS, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca
        )
        async with running(recorder, settings) as server:
            if client == "no certificate":
                tls = client_tls(pki.ca, None, None)
            else:
                tls = client_tls(pki.ca, pki.rogue_cert, pki.rogue_key)
            with pytest.raises(
                OSError
            ):  # ssl.SSLError or a closed connection (TLS 1.3 alerts late)
                await send("127.0.0.1", server.port, [MSG], tls=tls, timeout_s=5)
            await wait_until(lambda: bool(recorder.named("tls_handshake_failed")))
            # and a proper client still gets through afterwards
            good = client_tls(pki.ca, pki.client_cert, pki.client_key)
            assert await send("127.0.0.1", server.port, [b"ok"], tls=good) == [b"ACK:ok"]
        assert recorder.messages == [b"ok"]
        reason = recorder.named("tls_handshake_failed")[0]["reason"]
        expected = "CERTIFICATE" if client == "no certificate" else "VERIFY_FAILED"
        assert expected in reason, reason

    run(body)


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        MllpSettings(tls_client_ca=Path("ca.pem"))
    with pytest.raises(ValueError):
        MllpSettings(max_frame_bytes=0)


@given(
    parts=st.lists(
        st.tuples(
            st.binary(max_size=6).filter(lambda b: b"\x0b" not in b),  # junk before a frame
            st.binary(max_size=40).filter(lambda b: b"\x1c\r" not in b and not b.endswith(b"\x1c")),
        ),
        max_size=6,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
@example(  # an oversize frame holding a bare 0x1C, split before its end (found by CI)
    parts=[(b"", b"\x00" * 9 + b"\x1c" + b"\x00" * 11), (b"", b"\x00\x1c\x00")], cuts=[15]
)
@hypothesis_settings(max_examples=300, deadline=None)
def test_decoder_result_does_not_depend_on_how_reads_split_the_stream(
    parts: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(junk + frame(content) for junk, content in parts)
    whole = MllpDecoder(20)
    expected = whole.feed(stream) + whole.finish()
    chunked = MllpDecoder(20)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    events = [e for a, b in itertools.pairwise(bounds) for e in chunked.feed(stream[a:b])]
    assert events + chunked.finish() == expected
    frames = [e.payload for e in expected if isinstance(e, Frame)]
    assert frames == [content for _, content in parts if len(content) <= 20]
    oversize = [e for e in expected if isinstance(e, Oversize)]
    assert [(e.size, e.head) for e in oversize] == [(len(c), c) for _, c in parts if len(c) > 20]
