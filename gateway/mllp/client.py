"""MLLP client: send messages on one connection and collect each reply, in order.

Used by `rems-gateway send` and the scenario runner. Like the server it knows nothing about HL7:
messages go out as given (without framing), replies come back without framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from enum import Enum
from pathlib import Path

from gateway.mllp.framing import END_BLOCK, START_BLOCK, Frame, MllpDecoder, Oversize

#: Largest reply accepted (an ACK is a few hundred bytes; an RRE^O12 a few KiB).
MAX_REPLY_BYTES = 16 * 1_048_576
_READ_CHUNK = 65536


class MllpClientError(ConnectionError):
    """The exchange failed at the MLLP level (the connection closed before a reply, or a reply
    too large). `replies` holds the replies received before the failure, in order."""

    def __init__(self, message: str, replies: list[bytes | None]) -> None:
        super().__init__(message)
        self.replies = replies


def client_tls(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A TLS client context: trust `ca` (PEM; None: the system's trust store), and present `cert`
    with `key` (PEM; key None: the key is in the cert file) for mutual TLS. The server's host name
    or IP address is checked against its certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(cert, key)
    elif key is not None:
        raise ValueError("a client key needs a client certificate")
    return context


class Reply(Enum):
    """Whether a message gets a reply; the caller knows (this module knows nothing of HL7)."""

    ALWAYS = "always"  # wait for it: none within the timeout is a ReplyTimeout
    NEVER = "never"  # the receiver sends none: do not wait
    MAYBE = "maybe"  # one only for some answers: wait up to the timeout, silence is None


class ReplyTimeout(TimeoutError):
    """No reply came in time. `replies` holds those received before, in order."""

    def __init__(self, message: str, replies: list[bytes | None]) -> None:
        super().__init__(message)
        self.replies = replies


async def send(
    host: str,
    port: int,
    messages: list[bytes],
    tls: ssl.SSLContext | None = None,
    timeout_s: float = 30,
) -> list[bytes]:
    """Send each message framed on one connection, waiting for its reply before the next one
    (`exchange` with a reply expected to every message)."""
    replies = await exchange(host, port, [(m, Reply.ALWAYS) for m in messages], tls, timeout_s)
    return [reply for reply in replies if reply is not None]


async def exchange(
    host: str,
    port: int,
    outgoing: Sequence[tuple[bytes, Reply]],
    tls: ssl.SSLContext | None = None,
    timeout_s: float = 30,
) -> list[bytes | None]:
    """Send each message framed on one connection and wait for the reply it gets, if any,
    before the next one; one entry per message (None: no reply).

    `timeout_s` bounds the connection (with the TLS handshake) and, separately, each reply:
    `ReplyTimeout` (a `TimeoutError`) when an expected reply does not come. A connection closed
    before a reply raises `MllpClientError` (a `ConnectionError`); TLS failures raise
    `ssl.SSLError`. All are `OSError`s."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(
            host,
            port,
            ssl=tls,
            server_hostname=host if tls is not None else None,
            ssl_handshake_timeout=timeout_s if tls is not None else None,
            limit=_READ_CHUNK,
        )
    replies: list[bytes | None] = []
    incoming = _Incoming(reader, replies)
    try:
        for index, (message, reply) in enumerate(outgoing, start=1):
            writer.write(START_BLOCK + message + END_BLOCK)
            async with asyncio.timeout(timeout_s):
                await writer.drain()
            if reply is Reply.NEVER:
                replies.append(None)
                continue
            where = f"message {index} of {len(outgoing)}"
            try:
                async with asyncio.timeout(timeout_s):
                    replies.append(await incoming.next(where))
            except TimeoutError:
                if reply is Reply.ALWAYS:
                    text = f"no reply to {where} within {timeout_s:g} s"
                    raise ReplyTimeout(text, replies) from None
                replies.append(None)
        return replies
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await writer.wait_closed()


class _Incoming:
    """The replies of one connection, deframed, one at a time."""

    def __init__(self, reader: asyncio.StreamReader, replies: list[bytes | None]) -> None:
        self.reader = reader
        self.replies = replies  # received so far, for the errors
        self.decoder = MllpDecoder(MAX_REPLY_BYTES)
        self.pending: list[bytes] = []

    async def next(self, where: str) -> bytes:
        while not self.pending:
            data = await self.reader.read(_READ_CHUNK)
            if not data:
                raise MllpClientError(
                    f"connection closed before the reply to {where}", self.replies
                )
            for event in self.decoder.feed(data):
                if isinstance(event, Frame):
                    self.pending.append(event.payload)
                elif isinstance(event, Oversize):
                    raise MllpClientError(
                        f"reply larger than {MAX_REPLY_BYTES} bytes", self.replies
                    )
        return self.pending.pop(0)
