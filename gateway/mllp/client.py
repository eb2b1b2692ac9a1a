"""MLLP client: send messages on one connection and collect each reply, in order.

Used by `rems-gateway send` and the scenario runner. Like the server it knows nothing about HL7:
messages go out as given (without framing), replies come back without framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

from gateway.mllp.framing import END_BLOCK, START_BLOCK, Frame, MllpDecoder, Oversize

#: Largest reply accepted (an ACK is a few hundred bytes; an RRE^O12 a few KiB).
MAX_REPLY_BYTES = 16 * 1_048_576
_READ_CHUNK = 65536


class MllpClientError(ConnectionError):
    """The exchange failed at the MLLP level (the connection closed before a reply, or a reply
    too large). `replies` holds the replies received before the failure, in order."""

    def __init__(self, message: str, replies: list[bytes]) -> None:
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
        decoder = MllpDecoder(MAX_REPLY_BYTES)
        pending: list[bytes] = []
        for index, message in enumerate(messages):
            writer.write(START_BLOCK + message + END_BLOCK)
            async with asyncio.timeout(timeout_s):
                await writer.drain()
                while not pending:
                    data = await reader.read(_READ_CHUNK)
                    if not data:
                        raise MllpClientError(
                            f"connection closed before the reply to message {index + 1}"
                            f" of {len(messages)}",
                            replies,
                        )
                    for event in decoder.feed(data):
                        if isinstance(event, Frame):
                            pending.append(event.payload)
                        elif isinstance(event, Oversize):
                            raise MllpClientError(
                                f"reply larger than {MAX_REPLY_BYTES} bytes", replies
                            )
            replies.append(pending.pop(0))
        return replies
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await writer.wait_closed()
