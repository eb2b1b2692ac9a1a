"""The HTTP app's outer guard: the request body limit, and the last answer to an unexpected error.

A body announced larger than the limit (Content-Length) is answered 413 before any of it is read;
a chunked body is counted as it arrives and refused once it passes the limit. Either way the
connection is closed after the 413, since the rest of the body was never read.

An exception no handler answered gets a 500 here, sent as an ordinary response: Starlette's own
last handler re-raises after answering, and the server then drops the kept-alive connection and
any request already sent on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("rems_gateway.http")

CLOSE = {"Connection": "close"}


class BodyTooLarge(HTTPException):
    """413: the body passes the limit (an HTTPException, so every route answers it alike)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes", CLOSE)


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        refused: Callable[[Scope, HTTPException], Response],
        unexpected: Callable[[Scope, Exception], Response],
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.refused = refused
        self.unexpected = unexpected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = _request_problem(scope, self.max_body_bytes)
        if problem is not None:
            await self.refused(scope, problem)(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, self._capped(receive), tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await self.refused(scope, exc)(scope, receive, send)
        except Exception as exc:
            if started:
                raise  # half an answer is out: only closing the connection can end it
            log.error("unexpected error", exc_info=True)  # logs.py: type and place only
            await self.unexpected(scope, exc)(scope, receive, send)

    def _capped(self, receive: Receive) -> Receive:
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        return capped_receive


def _request_problem(scope: Scope, max_body_bytes: int) -> HTTPException | None:
    """What refuses the request before it reaches a route: a body announced too large, or a
    control character (NUL…) in the path or a query value, which no id or identifier holds."""
    if _announced_length(scope) > max_body_bytes:
        return BodyTooLarge(max_body_bytes)
    query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
    texts = [scope["path"], *(part for pair in query for part in pair)]
    if any(_has_control(text) for text in texts):
        return HTTPException(400, "a control character in the path or a query parameter")
    return None


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def _announced_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit():
                return 0  # the server refuses a malformed one
            return int(value) if len(value) < 19 else 2**63  # no int() of thousands of digits
    return 0
