"""MLLP transport (asyncio): framing, connections, TLS. It knows nothing about HL7 content.

Each framed message is handed to a `Handler` and the handler's reply is written back, strictly in
order per connection: the reply to message n is written before message n+1 is handled. Many
messages share one persistent connection; connections are served concurrently.

Framing (MLLP release 1): ``0x0B message 0x1C 0x0D``.

* Bytes outside a frame (before a ``0x0B``) are junk: skipped, logged as a byte count only.
* Only ``0x1C 0x0D`` ends a frame. A ``0x0B`` or a lone ``0x1C`` inside a frame is content (the
  lone ``0x1C`` is logged once per frame as a framing warning; the handler sees it and the HL7
  layer rejects the message).
* A frame whose content exceeds ``max_frame_bytes`` is discarded up to its end block without
  calling the handler; the ``oversize_reply`` hook gets the frame's first ≤ 4 KiB (to build an
  AR/AE ACK with the control id) and its reply, if any, is sent. The connection stays open.

Failure policy (what a sender sees):

* A handler exception (or a reply that is not bytes) is logged as its type and location, never
  its message, and **that connection is closed without a reply**. The sender gets no ACK and
  resends the message on a new connection (as Google's MLLP adapter does); replying nothing on
  an open connection would leave the sender waiting, and a later reply could be matched to the
  wrong message by a sender that does not check MSA-2. The HL7 layer is expected to turn its own
  failures into AR/AE replies; this is the last resort. The server keeps running.
* A handler that raises `CloseConnection` chose that on purpose (e.g. a sender configured to get
  no ACK while the store is unavailable): no reply, the connection is closed, logged as a warning.
* Beyond ``max_connections``, a connection is accepted and closed at once (before any TLS
  handshake), and logged.
* A connection with no bytes received (or a reply not taken by the peer) for ``idle_timeout_s``
  is closed.
* A TLS handshake failure (no client certificate, one from another CA, a plain-TCP client on a TLS
  port) is logged with the peer and the TLS reason, and the handler is never called.

No message content reaches a log line or an event: byte counts, peer address, TLS reason, error
type only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.logs import safe_exception
from gateway.mllp.framing import (  # noqa: F401  (re-exported for the client and tests)
    END_BLOCK,
    OVERSIZE_HEAD_BYTES,
    START_BLOCK,
    BareEndBlock,
    Frame,
    FrameEvent,
    Incomplete,
    Junk,
    MllpDecoder,
    Oversize,
    frame,
)
from gateway.mllp.tls import client_certificate, server_tls

log = logging.getLogger(__name__)


#: How much of an oversize frame the `oversize_reply` hook is given.
_READ_CHUNK = 65536
_CLOSE_TIMEOUT_S = 2.0
# TCP keepalive on accepted sockets: probe after 2 min of silence (below the 10 min after which
# cloud NATs and VPNs drop idle flows), every 30 s, give up after 4 unanswered probes.
_KEEPALIVE_IDLE_S = 120
_KEEPALIVE_INTERVAL_S = 30
_KEEPALIVE_COUNT = 4


@dataclass(frozen=True)
class PeerInfo:
    host: str
    port: int
    tls_subject: str | None = None  # RFC 4514 subject of a verified client certificate
    tls_fingerprint_sha256: str | None = None  # lower-case hex of SHA-256 over the DER certificate

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


Handler = Callable[[bytes, PeerInfo], Awaitable[bytes | list[bytes] | None]]
"""Message bytes (without framing) → reply bytes (without framing), or several replies sent in
order (an accept ACK, then the application's answer), or None to send nothing; raise
`CloseConnection` to send nothing and close the connection."""


class CloseConnection(Exception):
    """Raised by a handler: send no reply to this message and close its connection, so the sender
    times out and resends it (on a new connection). The text is logged: keep it free of content."""


OversizeReply = Callable[[bytes], bytes | None]
"""First ≤ 4 KiB of an oversize frame's content → reply bytes (without framing), or None."""

EventSink = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class MllpSettings:
    """The listener's limits; `serve` takes them from its settings (`mllp_max_frame_bytes`,
    `mllp_max_connections`, `mllp_idle_timeout_seconds`, `mllp_tls_handshake_timeout_seconds`)."""

    host: str = "127.0.0.1"
    port: int = 2575
    max_frame_bytes: int = 1_048_576
    max_connections: int = 256
    idle_timeout_s: float | None = 600.0  # None or <= 0: no idle timeout
    tls_handshake_timeout_s: float = 30.0  # at most the idle timeout
    keepalive: bool = True
    tls_cert: Path | None = None  # PEM certificate chain; enables TLS
    tls_key: Path | None = None  # PEM private key (None: the key is in tls_cert)
    tls_client_ca: Path | None = None  # mutual TLS: require client certificates from this CA

    def __post_init__(self) -> None:
        if self.max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be at least 1")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.tls_handshake_timeout_s <= 0:
            raise ValueError("tls_handshake_timeout_s must be more than 0")
        if self.tls_cert is None and (self.tls_key is not None or self.tls_client_ca is not None):
            raise ValueError("tls_key and tls_client_ca need tls_cert")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


# --- framing ----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Connection:
    peer: PeerInfo
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None
    waiting: bool = True  # waiting for the peer (handshake or read): safe to cancel on stop
    messages: int = 0
    opened: float = field(default_factory=time.monotonic)


class MllpServer:
    """An asyncio MLLP listener. `start()`, then `stop()`; see the module docstring for policy."""

    def __init__(
        self,
        settings: MllpSettings,
        handler: Handler,
        on_event: EventSink | None = None,
        *,
        oversize_reply: OversizeReply | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        """``sock``: a socket already bound (`serve` binds its ports before it starts, to say
        at once when one is in use); without it ``start`` binds settings.host and .port."""
        self.settings = settings
        self.handler = handler
        self.on_event = on_event
        self.oversize_reply = oversize_reply
        self._sock = sock
        self._server: asyncio.Server | None = None
        self._tls: ssl.SSLContext | None = None
        self._port: int | None = None
        self._stopping = False
        self._connections: set[_Connection] = set()

    @property
    def port(self) -> int:
        """The bound port (the real one when settings.port is 0)."""
        if self._port is None:
            raise RuntimeError("the MLLP server has not been started")
        return self._port

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    @property
    def serving(self) -> bool:
        return self._server is not None and not self._stopping

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the MLLP server is already started")
        self._tls = server_tls(
            self.settings.tls_cert, self.settings.tls_key, self.settings.tls_client_ca
        )
        self._stopping = False
        if self._sock is not None:
            self._server = await asyncio.start_server(
                self._on_client, sock=self._sock, limit=_READ_CHUNK
            )
        else:
            self._server = await asyncio.start_server(
                self._on_client,
                self.settings.host,
                self.settings.port,
                limit=_READ_CHUNK,
                reuse_address=True,
            )
        self._port = self._server.sockets[0].getsockname()[1]
        log.info(
            "mllp listening",
            extra={
                "host": self.settings.host,
                "port": self._port,
                "tls": self._tls is not None,
                "mutual_tls": self.settings.tls_client_ca is not None,
            },
        )

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting; let handlers in flight finish and their replies be written (up to
        grace_s), then close every connection. Frames received but not yet handled get no reply:
        their senders resend them."""
        server = self._server
        if server is None or self._stopping:
            return
        self._stopping = True
        server.close()
        for conn in list(self._connections):
            if conn.waiting and conn.task is not None:
                conn.task.cancel()
        tasks = [c.task for c in self._connections if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            if pending:
                log.warning("mllp stop: grace period over", extra={"connections": len(pending)})
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await server.wait_closed()
        self._server = None
        log.info("mllp stopped")

    # --- one connection ---

    def _emit(self, name: str, **data: Any) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(name, data)
        except Exception as exc:
            log.warning(
                "mllp event sink failed",
                extra={"event": name, "error": safe_exception(type(exc), exc.__traceback__)},
            )

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # No await may come before start_tls: bytes read into the plain stream would be lost.
        host, port = _peer_address(writer)
        peer = PeerInfo(host, port)
        if self._stopping:
            writer.transport.abort()
            return
        if len(self._connections) >= self.settings.max_connections:
            log.warning(
                "mllp connection refused: connection limit reached",
                extra={"peer": peer.address, "max_connections": self.settings.max_connections},
            )
            self._emit("connection_refused", reason="max_connections", peer=peer.address)
            writer.transport.abort()
            return
        conn = _Connection(peer, writer, asyncio.current_task())
        self._connections.add(conn)
        reason = "closed"
        try:
            if self.settings.keepalive:
                _set_keepalive(writer)
            if self._tls is not None:
                peer = await self._handshake(writer, peer)
                if peer is None:
                    reason = "tls_handshake_failed"
                    return
                conn.peer = peer
            log.info(
                "mllp connection opened",
                extra={
                    "peer": peer.address,
                    "tls": self._tls is not None,
                    "connections": len(self._connections),
                },
            )
            self._emit("connection_opened", peer=peer.address, tls=self._tls is not None)
            reason = await self._serve(conn, reader)
        except asyncio.CancelledError:
            # Cancelled by stop() (or loop shutdown). Not re-raised: this is the top-level task
            # asyncio.streams made for the connection, nobody awaits it, and Python 3.11 logs a
            # cancelled one as an error ("Exception in callback ... CancelledError").
            reason = "server_stopping" if self._stopping else "cancelled"
        except Exception as exc:  # never let one connection take the server down
            reason = "error"
            log.error(
                "mllp connection failed",
                extra={
                    "peer": peer.address,
                    "error": safe_exception(type(exc), exc.__traceback__),
                },
            )
        finally:
            self._connections.discard(conn)
            await _close(writer)
            if reason != "tls_handshake_failed":
                log.info(
                    "mllp connection closed",
                    extra={
                        "peer": conn.peer.address,
                        "reason": reason,
                        "messages": conn.messages,
                        "seconds": round(time.monotonic() - conn.opened, 3),
                    },
                )
                self._emit(
                    "connection_closed",
                    peer=conn.peer.address,
                    reason=reason,
                    messages=conn.messages,
                )

    async def _handshake(self, writer: asyncio.StreamWriter, peer: PeerInfo) -> PeerInfo | None:
        assert self._tls is not None
        timeout = self.settings.tls_handshake_timeout_s
        if self.settings.idle_timeout_s and self.settings.idle_timeout_s > 0:
            timeout = min(timeout, self.settings.idle_timeout_s)
        try:
            await writer.start_tls(self._tls, ssl_handshake_timeout=timeout)
        except (OSError, EOFError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            log.warning(
                "mllp tls handshake failed", extra={"peer": peer.address, "reason": str(reason)}
            )
            self._emit("tls_handshake_failed", peer=peer.address, reason=str(reason))
            return None
        subject, fingerprint = client_certificate(writer.get_extra_info("ssl_object"))
        if fingerprint is None:
            return peer
        return PeerInfo(peer.host, peer.port, subject, fingerprint)

    async def _serve(self, conn: _Connection, reader: asyncio.StreamReader) -> str:
        """Read, deframe, handle in order. Returns why the connection ends."""
        decoder = MllpDecoder(self.settings.max_frame_bytes)
        idle = self.settings.idle_timeout_s
        idle = idle if idle and idle > 0 else None
        while True:
            if self._stopping:
                return "server_stopping"
            conn.waiting = True
            try:
                async with asyncio.timeout(idle):
                    data = await reader.read(_READ_CHUNK)
            except TimeoutError:
                log.info(
                    "mllp idle timeout",
                    extra={"peer": conn.peer.address, "idle_timeout_s": idle},
                )
                self._emit("idle_timeout", peer=conn.peer.address)
                return "idle_timeout"
            except OSError as exc:
                log.info(
                    "mllp read failed",
                    extra={"peer": conn.peer.address, "error": type(exc).__name__},
                )
                return "read_error"
            finally:
                conn.waiting = False
            if not data:
                for event in decoder.finish():
                    self._framing_event(conn, event)
                return "peer_closed"
            for event in decoder.feed(data):
                if isinstance(event, Frame):
                    outcome = await self._handle(conn, event.payload)
                elif isinstance(event, Oversize):
                    outcome = await self._oversize(conn, event)
                else:
                    self._framing_event(conn, event)
                    continue
                if outcome is not None:
                    return outcome
                if self._stopping:
                    return "server_stopping"

    def _framing_event(self, conn: _Connection, event: FrameEvent) -> None:
        if isinstance(event, Junk):
            log.info(
                "mllp junk skipped before start block",
                extra={"peer": conn.peer.address, "bytes": event.size},
            )
            self._emit("junk_skipped", peer=conn.peer.address, bytes=event.size)
        elif isinstance(event, BareEndBlock):
            log.warning(
                "mllp framing: 0x1C not followed by 0x0D inside a frame",
                extra={"peer": conn.peer.address},
            )
            self._emit("bare_end_block", peer=conn.peer.address)
        elif isinstance(event, Incomplete):
            log.info(
                "mllp connection ended inside a frame",
                extra={"peer": conn.peer.address, "bytes": event.size},
            )
            self._emit("incomplete_frame", peer=conn.peer.address, bytes=event.size)

    async def _handle(self, conn: _Connection, message: bytes) -> str | None:
        """Run the handler on one message and write its reply; a reason string closes."""
        started = time.perf_counter()
        try:
            reply = _frames(await self.handler(message, conn.peer))
        except CloseConnection as close:
            log.warning(
                "mllp handler asked to close the connection without a reply",
                extra={"peer": conn.peer.address, "bytes": len(message), "reason": str(close)},
            )
            self._emit("handler_closed", peer=conn.peer.address, reason=str(close))
            return "handler_closed"
        except Exception as exc:
            log.error(
                "mllp handler failed; closing the connection without a reply",
                extra={
                    "peer": conn.peer.address,
                    "bytes": len(message),
                    "error": safe_exception(type(exc), exc.__traceback__),
                },
            )
            self._emit("handler_error", peer=conn.peer.address, error=type(exc).__name__)
            return "handler_error"
        conn.messages += 1
        outcome = await self._reply(conn, reply)
        self._emit(
            "message",
            peer=conn.peer.address,
            bytes=len(message),
            reply_bytes=len(reply) if reply is not None else 0,
            seconds=time.perf_counter() - started,
        )
        return outcome

    async def _oversize(self, conn: _Connection, event: Oversize) -> str | None:
        log.warning(
            "mllp frame too large: discarded",
            extra={
                "peer": conn.peer.address,
                "bytes": event.size,
                "max_frame_bytes": self.settings.max_frame_bytes,
            },
        )
        self._emit("frame_too_large", peer=conn.peer.address, bytes=event.size)
        if self.oversize_reply is None:
            return None
        try:
            reply = self.oversize_reply(event.head)
        except Exception as exc:
            log.error(
                "mllp oversize_reply hook failed",
                extra={
                    "peer": conn.peer.address,
                    "error": safe_exception(type(exc), exc.__traceback__),
                },
            )
            return None
        return await self._reply(conn, reply)

    async def _reply(self, conn: _Connection, reply: bytes | None) -> str | None:
        """Write one reply: one frame, or several framed back to back (see ``_frames``)."""
        if reply is None:
            return None
        idle = self.settings.idle_timeout_s
        try:
            conn.writer.write(START_BLOCK + bytes(reply) + END_BLOCK)
            if conn.writer.transport.get_write_buffer_size() == 0 and not conn.writer.is_closing():
                return None  # the kernel took it all: nothing to wait for
            async with asyncio.timeout(idle if idle and idle > 0 else None):
                await conn.writer.drain()
        except TimeoutError:
            log.info("mllp reply not taken by the peer", extra={"peer": conn.peer.address})
            return "write_timeout"
        except OSError as exc:
            log.info(
                "mllp write failed",
                extra={"peer": conn.peer.address, "error": type(exc).__name__},
            )
            return "write_error"
        return None


# --- helpers ----------------------------------------------------------------------------------


def _frames(reply: object) -> bytes | None:
    """A handler's reply as the bytes between the first start block and the last end block:
    several replies are joined by an end and a start block, so each leaves as its own frame."""
    if reply is None or isinstance(reply, bytes | bytearray | memoryview):
        return None if reply is None else bytes(reply)
    if isinstance(reply, list) and all(isinstance(r, bytes) for r in reply):
        return (END_BLOCK + START_BLOCK).join(reply)
    raise TypeError(f"MLLP handler returned {type(reply).__name__}, not bytes")


def _peer_address(writer: asyncio.StreamWriter) -> tuple[str, int]:
    peername = writer.get_extra_info("peername")
    if isinstance(peername, tuple) and len(peername) >= 2:
        return str(peername[0]), int(peername[1])
    return str(peername), 0


def _set_keepalive(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (
            ("TCP_KEEPIDLE", _KEEPALIVE_IDLE_S),
            ("TCP_KEEPINTVL", _KEEPALIVE_INTERVAL_S),
            ("TCP_KEEPCNT", _KEEPALIVE_COUNT),
        ):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    except OSError as exc:
        log.debug("mllp keepalive not set", extra={"error": type(exc).__name__})


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close politely (TLS close_notify), but never wait long for a peer that does not answer."""
    if writer.transport.is_closing():
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await writer.wait_closed()
        return
    writer.close()
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT_S):
            await writer.wait_closed()
    except (TimeoutError, OSError):
        writer.transport.abort()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise
