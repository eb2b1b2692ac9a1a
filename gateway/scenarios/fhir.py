"""Scenario steps as FHIR R4 over HTTP (contracts.md §2, `--via fhir`).

Each step goes to the gateway's FHIR endpoint with `X-Clinical-Time: <at>` and `Prefer:
return=OperationOutcome` (resources: gateway/scenario_fhir_resources.py; answers:
gateway/scenario_fhir_answers.py):

- `lab` → `POST /fhir/Observation`, `labs` → a transaction Bundle (`POST /fhir`); `derived` and
  `usable` are read from what the gateway stored;
- `dispense` → `POST /fhir/MedicationRequest`;
- `psf` → `POST /fhir/QuestionnaireResponse`, with the prescriber's own user token when the step
  says `signed: true` for a prescriber, the runner's system token otherwise;
- `sign` → `POST /fhir/QuestionnaireResponse/{id}/$sign` with the signer's user token, on the
  response the step's `psf` names, else the patient's newest one still pending (else its newest);
  a patient with no response at all has nothing to `$sign`: the service answers that;
- `fhir` steps are posted as written; `hl7` steps, and the steps after one, are skipped
  (gateway/scenario.py: InProcessChannel.run);
- `advance_to` goes through the application service (FHIR has no operation for it).

``FhirChannel`` talks to a ``FhirEndpoint`` (base URL, token endpoint, the runner's SMART
clients: gateway/scenario_smart.py). Without one it runs the gateway's app on a real uvicorn
server on a loopback port, in this process, on the runner's service, with SMART Backend Services
auth and the message clock; a separately running gateway is gateway/scenario_fhir_live.py's.
``InProcessFhir`` is the same app without a socket (httpx's ASGI transport, development auth)
for in-process `fhir` steps.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from gateway.scenario import InProcessChannel, NotSupportedYet
from gateway.scenario_fhir_answers import (
    answer_fields,
    decision_fields,
    lab_fields,
    psf_fields,
)
from gateway.scenario_fhir_resources import (
    Decimals,
    as_written,
    medication_request,
    observation,
    questionnaire_response,
    report_bundle,
)
from gateway.scenario_file import Scenario, ScenarioError, Step
from gateway.scenario_smart import RunnerClient, RunnerClients, TokenSource
from gateway.service import RemsService
from rems_core.model import Identifier, LabResult, PatientStatusForm, PsfStatus, SubmitterRole

FHIR_JSON = "application/fhir+json"
PENDING = PsfStatus.PENDING_PRESCRIBER_SIGNATURE.value
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
    http: httpx.AsyncClient, path: str, content: bytes, headers: dict[str, str]
) -> Answer:
    response = await http.post(path, content=content, headers=headers)
    try:
        return response.status_code, response.json(), response.headers
    except ValueError:
        return response.status_code, None, response.headers


def raw_step(step: Step) -> tuple[str, bytes]:
    """A fhir step's resource as written: a Bundle to the base, a resource to its type."""
    if not isinstance(step.body, dict) or "resourceType" not in step.body:
        raise ScenarioError(f"{step.label}: a fhir step is a resource with its resourceType")
    kind = str(step.body["resourceType"])
    path = "/fhir" if kind == "Bundle" else f"/fhir/{kind}"
    numbers = Decimals()
    return path, numbers.dumps(as_written(step.body, numbers))


async def stored_anc(service: RemsService, identifiers: list[Identifier], step: Step) -> dict:
    """`derived` and `usable` of the first ANC stored for the patient at the step's time."""

    stored = await service.ancs_received(identifiers, step.at)
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


# --- in process: the app without a socket ------------------------------------------------------


class InProcessFhir:
    """The gateway's app on the runner's service through httpx's ASGI transport: the same FHIR
    mapping and service as the HTTP endpoint, no socket (development auth, message clock)."""

    def __init__(self, service: RemsService) -> None:
        from gateway.app import GatewayState, create_app

        settings = gateway_settings(service, auth="development")
        app = create_app(service, settings, GatewayState(service.writer.engine, service.writer))
        transport = httpx.ASGITransport(app=app)
        self.service = service
        self.http = httpx.AsyncClient(transport=transport, base_url="http://in-process")

    async def run(self, step: Step, identifiers: list[Identifier] | None) -> dict[str, Any]:
        path, content = raw_step(step)
        status, body, _ = await post(self.http, path, content, step_headers(step))
        fields = answer_fields(status, body)
        if identifiers:
            fields |= await stored_anc(self.service, identifiers, step)
        return fields

    async def close(self) -> None:
        await self.http.aclose()


def gateway_settings(service: RemsService, **more: Any) -> Any:
    from gateway.config import Settings

    return Settings(
        clock="message",
        host="127.0.0.1",
        mllp_port=free_port(),  # the app's MLLP listener: unused here, but never in the way
        timezone=str(service.tz),
        **more,
    )


# --- over HTTP ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FhirEndpoint:
    """Where the channel's requests go and who sends them: the gateway's base URL (FHIR at
    `/fhir`), its token endpoint (the assertions' `aud`) and the runner's SMART clients."""

    base_url: str
    token_url: str
    clients: RunnerClients


class FhirChannel(InProcessChannel):
    """Every step FHIR offers over HTTP to the gateway's FHIR endpoint, with SMART tokens; the
    rest through the service. Given no ``endpoint``, ``open`` starts the gateway's app on a
    loopback port with fresh clients (LoopbackGateway) and ``close`` removes both."""

    def __init__(
        self, service: RemsService, scenario: Scenario, endpoint: FhirEndpoint | None = None
    ) -> None:
        super().__init__(service, scenario)
        self.endpoint = endpoint
        self.http: httpx.AsyncClient | None = None
        self.server: LoopbackGateway | None = None
        self.tokens: TokenSource | None = None
        self.responses: dict[str, str] = {}  # psf id → QuestionnaireResponse id
        self.pending: dict[str, list[str]] = {}  # patient handle → pending responses, oldest first
        self.newest: dict[str, str] = {}  # patient handle → its newest response

    @property
    def clients(self) -> RunnerClients | None:
        return self.endpoint.clients if self.endpoint else None

    async def open(self) -> None:
        if self.endpoint is None:
            self.endpoint = await asyncio.to_thread(self._start_loopback)
        self.http = httpx.AsyncClient(base_url=self.endpoint.base_url, timeout=30)
        self.tokens = TokenSource(self.http, self.endpoint.token_url)

    def _start_loopback(self) -> FhirEndpoint:
        clients = RunnerClients.make(signer_npis(self.scenario))
        self.server = LoopbackGateway(self.service, clients)
        try:
            base = self.server.start()
        except BaseException:
            clients.remove()
            raise
        return FhirEndpoint(base, f"{base}/auth/token", clients)

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()
        if self.server is not None:  # the loopback gateway and the clients this channel made
            await asyncio.to_thread(self.server.stop)
            self.server.clients.remove()

    def _client(self, npi: str | None = None) -> RunnerClient:
        """The prescriber's own user client, or (no NPI) the runner's system client."""
        assert self.clients is not None
        if npi is None:
            return self.clients.system
        return self.clients.prescribers[npi]

    async def _post(
        self, path: str, content: bytes, step: Step, client: RunnerClient | None = None
    ) -> Answer:
        assert self.http is not None and self.tokens is not None
        headers = step_headers(step) | await self.tokens.bearer(client or self._client())
        return await post(self.http, path, content, headers)

    def _subject(self, step: Step) -> Identifier:
        return self.identifiers(step.patient)[0]

    async def _labs(self, step: Step) -> dict[str, Any]:
        numbers = Decimals()
        results: list[LabResult] = step.request
        if step.kind == "lab":
            body = observation(results[0], self._subject(step), numbers)
            status, answer, _ = await self._post("/fhir/Observation", numbers.dumps(body), step)
        else:
            bundle = report_bundle(results, self._subject(step), numbers)
            status, answer, _ = await self._post("/fhir", numbers.dumps(bundle), step)
        return lab_fields(status, answer) | await self._stored(step)

    async def _stored(self, step: Step) -> dict[str, Any]:
        """`derived` and `usable` of the step's ANC, from the database the gateway stored it in."""
        return await stored_anc(self.service, self.identifiers(step.patient), step)

    async def _dispense(self, step: Step) -> dict[str, Any]:
        numbers = Decimals()
        body = medication_request(step.request, self._subject(step), numbers)
        status, answer, _ = await self._post("/fhir/MedicationRequest", numbers.dumps(body), step)
        return decision_fields(status, answer)

    async def _psf(self, step: Step) -> dict[str, Any]:
        form: PatientStatusForm = step.request
        numbers = Decimals()
        body = questionnaire_response(form, self._subject(step), numbers)
        client = self._client(form.signed_by) if signs_own_form(form) else None
        status, answer, headers = await self._post(
            "/fhir/QuestionnaireResponse", numbers.dumps(body), step, client
        )
        fields = psf_fields(status, answer)
        found = resource_id(headers, "QuestionnaireResponse") if status < 400 else None
        if found is not None:
            self._remember(str(step.patient), found, fields)
        return fields

    def _remember(self, handle: str, response: str, fields: dict[str, Any]) -> None:
        if fields.get("psf_id"):
            self.responses[str(fields["psf_id"])] = response
        self.newest[handle] = response
        if fields.get("status") == PENDING:
            self.pending.setdefault(handle, []).append(response)

    async def _sign(self, step: Step) -> dict[str, Any]:
        signer, psf_id = step.request
        handle = str(step.patient)
        response = self._response_to_sign(handle, psf_id)
        if response is None:  # nothing this run submitted: nothing to $sign over FHIR
            return await super()._sign(step)
        status, answer, _ = await self._post(
            f"/fhir/QuestionnaireResponse/{response}/$sign",
            SIGN_PARAMETERS,
            step,
            self._client(signer),
        )
        fields = psf_fields(status, answer)
        if status < 400 and fields.get("status") != PENDING:
            waiting = self.pending.get(handle, [])
            self.pending[handle] = [r for r in waiting if r != response]
        return fields

    def _response_to_sign(self, handle: str, psf_id: str | None) -> str | None:
        if psf_id is not None:
            return self.responses.get(psf_id)
        waiting = self.pending.get(handle)
        return waiting[-1] if waiting else self.newest.get(handle)

    async def _fhir(self, step: Step) -> dict[str, Any]:
        path, content = raw_step(step)
        status, answer, headers = await self._post(path, content, step)
        fields = answer_fields(status, answer)
        if step.patient is None:
            return fields
        found = resource_id(headers, "QuestionnaireResponse") if status < 400 else None
        if found is not None:  # a later sign step may $sign it
            self._remember(step.patient, found, fields)
        return fields | await self._stored(step)

    async def _hl7(self, step: Step) -> dict[str, Any]:
        raise NotSupportedYet("an hl7 step: --via fhir skips it (contracts.md §2)")


def signs_own_form(form: PatientStatusForm) -> bool:
    """`signed: true` from a prescriber: the prescriber's own act, with their user token."""
    return form.role == SubmitterRole.PRESCRIBER and form.signed_by is not None


def signer_npis(scenario: Scenario) -> list[str]:
    """Everyone who may act as a signed-in prescriber in this file: the registry's prescribers,
    and any other NPI that signs or submits a signed form (the gateway then judges them)."""
    npis = [str(p.npi) for p in scenario.registry.prescribers]
    for step in scenario.steps:
        if step.kind == "sign":
            npis.append(step.request[0])
        elif step.kind == "psf" and signs_own_form(step.request):
            npis.append(step.request.signed_by)
    return list(dict.fromkeys(npis))


class LoopbackGateway:
    """The gateway's app on a real uvicorn server on a free loopback port, in a thread of this
    process, on the runner's service: SMART Backend Services with the runner's clients, the
    message clock."""

    def __init__(self, service: RemsService, clients: RunnerClients) -> None:
        self.service = service
        self.clients = clients
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> str:
        from gateway.app import GatewayState, create_app

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        settings = gateway_settings(
            self.service,
            auth="smart",
            smart_clients=self.clients.clients_file,
            smart_signing_key=self.clients.signing_key_file,
            public_base_url=base,
        )
        writer = self.service.writer
        app = create_app(self.service, settings, GatewayState(writer.engine, writer))
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
