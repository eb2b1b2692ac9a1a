"""MLLP client: messages out on one connection, replies in, in order (`send` waits for a reply
to each; `connect` leaves to the caller which replies to wait for).

Used by `rems-gateway send` and the scenario runner. Like the server it knows nothing about HL7:
messages go out as given (without framing), replies come back without framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from gateway.mllp.framing import END_BLOCK, START_BLOCK, Frame, MllpDecoder, Oversize

#: Largest reply accepted (an ACK is a few hundred bytes; an RRE^O12 a few KiB).
MAX_REPLY_BYTES = 16 * 1_048_576
_READ_CHUNK = 65536


class MllpClientError(ConnectionError):
    """The exchange failed at the MLLP level (the connection closed before a reply, or a reply
    too large). `replies` holds the replies received before the failure, in order."""

    def __init__(self, message: str, replies: Sequence[bytes | None]) -> None:
        super().__init__(message)
        self.replies = list(replies)


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


async def send(
    host: str,
    port: int,
    messages: list[bytes],
    tls: ssl.SSLContext | None = None,
    timeout_s: float = 30,
) -> list[bytes]:
    """Send each message framed on one connection, waiting for its reply before the next one.

    `timeout_s` bounds the connection (with the TLS handshake) and, separately, each reply:
    `TimeoutError` when exceeded. A connection closed before a reply raises `MllpClientError`
    (a `ConnectionError`); TLS failures raise `ssl.SSLError`. Both are `OSError`s."""
    replies: list[bytes] = []
    async with connect(host, port, tls, timeout_s) as connection:
        for index, message in enumerate(messages, start=1):
            await connection.send(message)
            where = f"message {index} of {len(messages)}"
            reply = await connection.reply(timeout_s, where, replies)
            if reply is None:
                raise TimeoutError(f"no reply to {where} within {timeout_s:g} s")
            replies.append(reply)
    return replies


@contextlib.asynccontextmanager
async def connect(
    host: str, port: int, tls: ssl.SSLContext | None = None, timeout_s: float = 30
) -> AsyncIterator[MllpConnection]:
    """One connection (TLS when `tls` is given), closed on leaving; `timeout_s` bounds the
    connection with its handshake."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(
            host,
            port,
            ssl=tls,
            server_hostname=host if tls is not None else None,
            ssl_handshake_timeout=timeout_s if tls is not None else None,
            limit=_READ_CHUNK,
        )
    try:
        yield MllpConnection(reader, writer, timeout_s)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await writer.wait_closed()


class MllpConnection:
    """Framed messages out, deframed replies in, one at a time."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout_s: float
    ) -> None:
        self.reader, self.writer, self.timeout_s = reader, writer, timeout_s
        self.decoder = MllpDecoder(MAX_REPLY_BYTES)
        self.pending: list[bytes] = []

    async def send(self, message: bytes) -> None:
        self.writer.write(START_BLOCK + message + END_BLOCK)
        async with asyncio.timeout(self.timeout_s):
            await self.writer.drain()

    async def reply(
        self, timeout_s: float, where: str = "", replies: Sequence[bytes | None] = ()
    ) -> bytes | None:
        """The next reply, or None when none comes within `timeout_s`. `where` and `replies`
        (those received before) go into the MllpClientError of a closed connection."""
        try:
            async with asyncio.timeout(timeout_s):
                while not self.pending:
                    await self._read(where, replies)
        except TimeoutError:
            return None
        return self.pending.pop(0)

    async def _read(self, where: str, replies: Sequence[bytes | None]) -> None:
        data = await self.reader.read(_READ_CHUNK)
        if not data:
            raise MllpClientError(f"connection closed before the reply to {where}", replies)
        for event in self.decoder.feed(data):
            if isinstance(event, Frame):
                self.pending.append(event.payload)
            elif isinstance(event, Oversize):
                raise MllpClientError(f"reply larger than {MAX_REPLY_BYTES} bytes", replies)
