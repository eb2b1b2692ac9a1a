"""The gateway's own app for the scenario runner's FHIR steps: in process without a socket
(``InProcessFhir``, httpx's ASGI transport, development auth) or on a real uvicorn server on a
loopback port (``LoopbackGateway``, SMART Backend Services with the runner's clients), both on the
message clock and the runner's application; and the HTTP helpers the FHIR channels share."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import httpx
import uvicorn

from gateway.app.bootstrap import Gateway
from gateway.app.reads import RemsReads
from gateway.config import Settings
from gateway.http.app import create_app
from gateway.scenarios.fhir_answers import answer_fields
from gateway.scenarios.fhir_resources import Decimals, as_written
from gateway.scenarios.file import ScenarioError, Step
from gateway.scenarios.smart import RunnerClients
from rems_core.model import Identifier

FHIR_JSON = "application/fhir+json"
SIGN_PARAMETERS = json.dumps({"resourceType": "Parameters"}).encode()

Answer = tuple[int, Any, httpx.Headers]


def step_headers(step: Step) -> dict[str, str]:
    return {
        "Content-Type": FHIR_JSON,
        "Accept": FHIR_JSON,
        "X-Clinical-Time": step.at.isoformat(),
        "Prefer": "return=OperationOutcome",
    }


async def post(
    http: httpx.AsyncClient,
    path: str,
    content: bytes,
    headers: dict[str, str],
    method: str = "POST",
) -> Answer:
    response = await http.request(method, path, content=content, headers=headers)
    try:
        return response.status_code, response.json(), response.headers
    except ValueError:
        return response.status_code, None, response.headers


BUNDLE_PATHS = {"transaction": "/fhir", "batch": "/fhir", "message": "/fhir/$process-message"}


def raw_step(step: Step) -> tuple[str, str, bytes]:
    """A fhir step's resource as written, as (method, path, content): a transaction or batch is
    POSTed to the base, a message to `$process-message`, another Bundle (a collection) to
    `/fhir/Bundle`; a resource with an `id` is PUT to `/fhir/{type}/{id}` (FHIR's update: a
    client's Patient keeps its id), any other resource is POSTed to its type."""
    if not isinstance(step.body, dict) or "resourceType" not in step.body:
        raise ScenarioError(f"{step.label}: a fhir step is a resource with its resourceType")
    kind = str(step.body["resourceType"])
    method, path = "POST", f"/fhir/{kind}"
    if kind == "Bundle":
        path = BUNDLE_PATHS.get(str(step.body.get("type")), "/fhir/Bundle")
    if kind != "Bundle" and step.body.get("id") is not None:
        method, path = "PUT", f"/fhir/{kind}/{step.body['id']}"
    numbers = Decimals()
    return method, path, numbers.dumps(as_written(step.body, numbers))


async def stored_anc(reads: RemsReads, identifiers: list[Identifier], step: Step) -> dict:
    """`derived` and `usable` of the first ANC stored for the patient at the step's time."""
    stored = await reads.ancs_received(identifiers, step.at)
    first = stored[0] if stored else None
    return {
        "derived": first.derived if first else None,
        "usable": first.usable if first else None,
    }


def resource_id(headers: httpx.Headers, resource_type: str) -> str | None:
    """The id in a Location header (`…/QuestionnaireResponse/{id}/_history/{v}`)."""
    parts = headers.get("location", "").split("/")
    if resource_type in parts and parts.index(resource_type) + 1 < len(parts):
        return parts[parts.index(resource_type) + 1]
    return None


class InProcessFhir:
    """The gateway's app on the runner's service through httpx's ASGI transport: the same FHIR
    mapping and service as the HTTP endpoint, no socket (development auth, message clock)."""

    def __init__(self, application: Gateway) -> None:
        settings = gateway_settings(application, auth="development")
        transport = httpx.ASGITransport(app=create_app(application, settings))
        self.reads = application.reads
        self.http = httpx.AsyncClient(transport=transport, base_url="http://in-process")

    async def run(self, step: Step, identifiers: list[Identifier] | None) -> dict[str, Any]:
        method, path, content = raw_step(step)
        status, body, _ = await post(self.http, path, content, step_headers(step), method)
        fields = answer_fields(status, body)
        if identifiers:
            fields |= await stored_anc(self.reads, identifiers, step)
        return fields

    async def close(self) -> None:
        await self.http.aclose()


def gateway_settings(application: Gateway, **more: Any) -> Settings:
    return Settings(
        clock="message",
        host="127.0.0.1",
        timezone=str(application.ctx.tz),
        **more,
    )


class LoopbackGateway:
    """The gateway's app on a real uvicorn server on a free loopback port, in a thread of this
    process, on the runner's service: SMART Backend Services with the runner's clients, the
    message clock."""

    def __init__(self, application: Gateway, clients: RunnerClients) -> None:
        self.application = application
        self.clients = clients
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> str:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        settings = gateway_settings(
            self.application,
            auth="smart",
            smart_clients=self.clients.clients_file,
            cds_clients=self.clients.cds_clients_file,
            smart_signing_key=self.clients.signing_key_file,
            public_base_url=base,
        )
        app = create_app(self.application, settings)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise ScenarioError("the FHIR endpoint did not start")
            time.sleep(0.01)
        return base

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
