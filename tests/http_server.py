"""The gateway's FastAPI app (or any ASGI app) on a real uvicorn server in a thread, on a free
loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine
from starlette.types import ASGIApp

from gateway.app.bootstrap import Gateway
from gateway.app.reads import RemsReads
from gateway.app.service import RemsService
from gateway.config import Settings
from gateway.http.app import Companion, create_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_app(
    service: RemsService,
    engine: Engine,
    extend: Callable[[FastAPI], None] | None = None,
    companions: Sequence[Companion] = (),
    **settings: Any,
) -> Iterator[str]:
    """Yields the base URL (http://127.0.0.1:PORT) while the server runs; ``extend`` may add
    test-only routes to the app first; ``companions`` run beside it (as serve's do)."""
    defaults: dict[str, Any] = {
        "auth": "development",
        "clock": "message",
        "timezone": "UTC",
    }
    config = Settings(**(defaults | settings))
    reads = RemsReads(engine, service.ctx)
    gateway = Gateway(engine, service.writer, service, reads, service.ctx)
    app = create_app(gateway, config, companions=companions)
    if extend is not None:
        extend(app)
    with serving(app) as base_url:
        yield base_url


@contextmanager
def serving(app: ASGIApp) -> Iterator[str]:
    """Any ASGI app on uvicorn in a thread: yields http://127.0.0.1:PORT while it runs."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
