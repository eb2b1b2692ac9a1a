"""Scenario steps as FHIR R4 over HTTP (docs/contracts.md §2, `--via fhir`).

Each step goes to the gateway's FHIR endpoint with `X-Clinical-Time: <at>` and `Prefer:
return=OperationOutcome` (resources: fhir_resources.py; answers:
fhir_answers.py):

- `lab` → `POST /fhir/Observation`, `labs` → a transaction Bundle (`POST /fhir`); `derived` and
  `usable` are read from what the gateway stored;
- `dispense` → `POST /fhir/MedicationRequest`;
- `psf` → `POST /fhir/QuestionnaireResponse`, with the prescriber's own user token when the step
  says `signed: true` for a prescriber, the runner's system token otherwise; with
  `complete_draft: true`, `PUT /fhir/QuestionnaireResponse/{id}` of the patient's open draft (the
  step's answers and the draft's pre-filled ANC items);
- `sign` → `POST /fhir/QuestionnaireResponse/{id}/$sign` with the signer's user token, on the
  response the step's `psf` names, else the patient's newest one still pending (else its newest);
  a patient with no response at all has nothing to `$sign`: the service answers that;
- `fhir` steps are sent as written (a resource with an `id` is PUT to `/fhir/{type}/{id}`);
  `hl7` steps, and the steps after one, are skipped (channel.py: InProcessChannel.run);
- `adt` with an identifying event (A01, A04, A08, A28, A31) → `PUT /fhir/Patient/{id}`, a client
  Patient (id `scn-<file stem>-<step index>`; a live run's tag instead of the stem) with the
  identifiers its `pid` resolves to; its answer's issues are the `warnings` (PATIENT_AMBIGUOUS).
  Unlike HL7, a Patient naming no registry patient is stored, unlinked. Merges and other events
  go through the HL7 intake on the same database;
- `advance_to` goes through the application service (FHIR has no operation for it);
- `tasks` and `draft` are read with `GET /fhir/Task?patient=…&status=requested` and
  `GET /fhir/QuestionnaireResponse?patient=…&status=in-progress` (the system token).

``FhirChannel`` talks to a ``FhirEndpoint`` (base URL, token endpoint, the runner's SMART
clients: smart.py). Without one it runs the gateway's app on a real uvicorn server on a loopback
port, in this process, on the runner's application, with SMART Backend Services auth and the
message clock (fhir_app.py: ``LoopbackGateway``); a separately running gateway is fhir_live.py's.
``InProcessFhir`` (fhir_app.py) is the same app without a socket, for in-process `fhir` steps.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.app.bootstrap import Gateway
from gateway.fhir.smart import TOKEN_PATH
from gateway.scenarios.channel import (
    IN_PROGRESS,
    MANY,
    REQUESTED,
    InProcessChannel,
    NotSupportedYet,
    pid_candidates,
    shipment_fields,
)
from gateway.scenarios.fhir_answers import (
    answer_fields,
    coded_findings,
    decision_fields,
    lab_fields,
    outcome_issues,
    psf_fields,
)
from gateway.scenarios.fhir_app import (
    FHIR_JSON,
    SIGN_PARAMETERS,
    Answer,
    LoopbackGateway,
    post,
    raw_step,
    resource_id,
    step_headers,
    stored_anc,
)
from gateway.scenarios.fhir_resources import (
    Decimals,
    medication_dispense,
    medication_request,
    observation,
    questionnaire_response,
    report_bundle,
)
from gateway.scenarios.file import DEFAULT_DRUG, AdtStep, Scenario, ScenarioError, Step
from gateway.scenarios.hooks import HookStep, send_hook
from gateway.scenarios.smart import RunnerClient, RunnerClients, TokenSource
from gateway.scenarios.worklist_answers import completing
from mappings.fhir.references import NPI_SYSTEM as NPI
from rems_core.identity import resolved
from rems_core.model import (
    DispenseRequest,
    Finding,
    Identifier,
    LabResult,
    PatientStatusForm,
    PsfStatus,
    Setting,
    SubmitterRole,
)
from rems_core.rda import DispenseRecord, OrderAction, OrderEnd
from rems_core.shipping import ShipmentQuery

PENDING = PsfStatus.PENDING_PRESCRIBER_SIGNATURE.value
IDENTIFYING_EVENTS = {"A01", "A04", "A08", "A28", "A31"}  # an adt step as a client Patient


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
        self, application: Gateway | None, scenario: Scenario, endpoint: FhirEndpoint | None = None
    ) -> None:
        super().__init__(application, scenario)
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
        self.server = LoopbackGateway(self._application(), clients)
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
        self,
        path: str,
        content: bytes,
        step: Step,
        client: RunnerClient | None = None,
        method: str = "POST",
    ) -> Answer:
        assert self.http is not None and self.tokens is not None
        headers = step_headers(step) | await self.tokens.bearer(client or self._client())
        return await post(self.http, path, content, headers, method)

    def _subject(self, step: Step) -> Identifier:
        """The handle's first identifier; for a `pid`, the first candidate that resolves (one of
        the file's registry patients' first), else its first value with no system (the gateway
        holds it: PATIENT_NOT_MATCHED)."""
        if step.pid is None:
            return self.identifiers(step.patient)[0]
        candidates = self.candidates(step)
        found = resolved(candidates)
        known = {i: h for h, ids in self.scenario.handles.items() for i in ids}
        if len({known[i] for i in found if i in known}) > 1:
            raise NotSupportedYet(
                "an Observation's subject is one identifier: candidates of two patients "
                "(PATIENT_AMBIGUOUS) are HL7's"
            )
        found.sort(key=lambda i: i not in known)  # the file's patient first, as matching would
        return found[0] if found else Identifier("", candidates[0].value)

    async def _labs(self, step: Step) -> dict[str, Any]:
        numbers = Decimals()
        results: list[LabResult] = step.request
        if step.kind == "lab":
            body = observation(results[0], self._subject(step), numbers)
            drop_empty_system(body)
            status, answer, _ = await self._post("/fhir/Observation", numbers.dumps(body), step)
        else:
            bundle = report_bundle(results, self._subject(step), numbers)
            drop_empty_system(bundle)
            status, answer, _ = await self._post("/fhir", numbers.dumps(bundle), step)
        return lab_fields(status, answer) | await self._stored(step)

    async def _stored(self, step: Step) -> dict[str, Any]:
        """`derived` and `usable` of the step's ANC, from the database the gateway stored it in."""
        return await stored_anc(self.reads, self.pid_identifiers(step), step)

    async def _dispense(self, step: Step) -> dict[str, Any]:
        numbers = Decimals()
        body = medication_request(step.request, self._subject(step), numbers)
        status, answer, _ = await self._post("/fhir/MedicationRequest", numbers.dumps(body), step)
        return decision_fields(status, answer)

    async def _cancel(self, step: Step) -> dict[str, Any]:
        """A MedicationRequest `cancelled` (`stopped` for a discontinue) with the order's request
        id: it ends that order."""
        end: OrderEnd = step.request
        status = "stopped" if end.action == OrderAction.DISCONTINUE else "cancelled"
        request = DispenseRequest("", "", Setting.OUTPATIENT, step.at, 1, DEFAULT_DRUG)
        numbers = Decimals()
        body = medication_request(request, self._subject(step), numbers)
        body |= {"status": status, "identifier": [{"value": end.request_id}]}
        code, answer, _ = await self._post("/fhir/MedicationRequest", numbers.dumps(body), step)
        reasons = coded_findings(outcome_issues(answer)) if code >= 400 else []
        return {"known": code < 400, "reasons": reasons, "http_status": code, "warnings": []}

    async def _dispensed(self, step: Step) -> dict[str, Any]:
        record: DispenseRecord = step.request
        numbers = Decimals()
        body = medication_dispense(record, self._subject(step))
        code, answer, _ = await self._post("/fhir/MedicationDispense", numbers.dumps(body), step)
        return answer_fields(code, answer)

    async def _psf(self, step: Step) -> dict[str, Any]:
        """`POST /fhir/QuestionnaireResponse`; completing the open draft, `PUT` of its id."""
        form: PatientStatusForm = step.request
        numbers = Decimals()
        body = questionnaire_response(form, self._subject(step), numbers)
        path, method = "/fhir/QuestionnaireResponse", "POST"
        if step.completes_draft:
            body = completing(body, await self.draft_to_complete(step))
            path, method = f"{path}/{body['id']}", "PUT"
        client = self._client(form.signed_by) if signs_own_form(form) else None
        status, answer, headers = await self._post(path, numbers.dumps(body), step, client, method)
        fields = psf_fields(status, answer)
        found = resource_id(headers, "QuestionnaireResponse") if status < 400 else None
        if found is not None:
            self._remember(str(step.patient), found, fields)
        return fields

    async def _search(self, path: str, params: dict[str, str], step: Step) -> list[Any]:
        """The resources of one page of a search, with the runner's system token."""
        assert self.http is not None and self.tokens is not None
        headers = {"Accept": FHIR_JSON} | await self.tokens.bearer(self._client())
        response = await self.http.get(path, params=params, headers=headers)
        if response.status_code != 200:
            raise ScenarioError(f"{step.label}: GET {path}: {response.status_code}")
        return [entry["resource"] for entry in response.json().get("entry") or ()]

    async def open_tasks(self, step: Step) -> list[dict[str, Any]]:
        """`GET /fhir/Task?patient=Patient/{id}&status=requested`."""
        patient = f"Patient/{self.registry_id(step)}"
        params = {"patient": patient, "status": REQUESTED, "_count": str(MANY)}
        return await self._search("/fhir/Task", params, step)

    async def open_drafts(self, step: Step) -> list[dict[str, Any]]:
        """`GET /fhir/QuestionnaireResponse?patient=Patient/{id}&status=in-progress`."""
        patient = f"Patient/{self.registry_id(step)}"
        params = {"patient": patient, "status": IN_PROGRESS, "_count": str(MANY)}
        return await self._search("/fhir/QuestionnaireResponse", params, step)

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
        method, path, content = raw_step(step)
        status, answer, headers = await self._post(path, content, step, method=method)
        fields = answer_fields(status, answer)
        if step.patient is None:
            return fields
        found = resource_id(headers, "QuestionnaireResponse") if status < 400 else None
        if found is not None:  # a later sign step may $sign it
            self._remember(step.patient, found, fields)
        return fields | await self._stored(step)

    def client_patient_id(self, step: Step) -> str:
        """The id of the client Patient an `adt` step PUTs: stable for the file and step."""
        return fhir_id(f"scn-{self.scenario.path.stem}-{step.index}")

    async def _ship_check(self, step: Step) -> dict[str, Any]:
        """`POST /fhir/Organization/$rems-ship-check` (rules §10), the system token."""
        query: ShipmentQuery = step.request
        parameters = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "wholesaler", "valueString": query.partner_ref},
                {
                    "name": "pharmacy",
                    "valueIdentifier": {"system": NPI, "value": query.pharmacy_npi},
                },
                {"name": "date", "valueDate": query.day.isoformat()},
            ],
        }
        path = "/fhir/Organization/$rems-ship-check"
        status, answer, _ = await self._post(path, json.dumps(parameters).encode(), step)
        if status != 200 or not isinstance(answer, dict):
            issues = answer.get("issue", []) if isinstance(answer, dict) else []
            return {"http_status": status, "reasons": coded_findings(issues)}
        named: dict[str, list[Any]] = {}
        for parameter in answer.get("parameter", []):
            named.setdefault(parameter["name"], []).append(parameter)
        findings = {
            kind: [
                Finding(p["valueCoding"]["code"], p["valueCoding"].get("display", ""))
                for p in named.get(kind, [])
            ]
            for kind in ("reason", "warning")
        }
        outcome = named["outcome"][0]["valueCode"]
        return shipment_fields(outcome, findings["reason"], findings["warning"]) | {
            "rule_pack": named["rule_pack"][0]["valueString"],
            "http_status": status,
        }

    async def _hook(self, step: Step) -> dict[str, Any]:
        """A CDS hook over HTTP, with the runner's CDS client JWT (its audience the service URL
        under the gateway's public base, the one its token endpoint is under)."""
        assert self.http is not None and self.endpoint is not None and self.clients is not None
        hook: HookStep = step.request
        identifiers = self.identifiers(hook.patient) if hook.patient else None
        public = self.endpoint.token_url.removesuffix(TOKEN_PATH)
        signer = self.clients.system

        def auth(path: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {signer.cds_token(public + path)}"}

        return await send_hook(self.http, hook, identifiers, step.at, auth)

    async def _adt(self, step: Step) -> dict[str, Any]:
        """An identifying event (A01, A04, A08, A28, A31) as `PUT /fhir/Patient/{id}` with the
        identifiers its `pid` resolves to (read with the file's sender); merges and other events
        through the HL7 intake on the database (InProcessChannel._adt)."""
        adt: AdtStep = step.request
        if adt.event not in IDENTIFYING_EVENTS:
            return await super()._adt(step)
        found = resolved(pid_candidates(self.pid_text(adt.pid), self.sender))
        resource_id = self.client_patient_id(step)
        body = client_patient(resource_id, found)
        status, answer, _ = await self._post(
            f"/fhir/Patient/{resource_id}", json.dumps(body).encode(), step, method="PUT"
        )
        fields = answer_fields(status, answer)
        return {"ack": fields["ack"], "http_status": status, "warnings": fields["warnings"]}

    async def _hl7(self, step: Step) -> dict[str, Any]:
        raise NotSupportedYet("an hl7 step: --via fhir skips it (docs/contracts.md §2)")


def npi_identifier(npi: str) -> dict[str, str]:
    return {"system": NPI, "value": npi}


def fhir_id(text: str) -> str:
    """``text`` as a FHIR id: letters, digits, `-` and `.`, at most 64 characters."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", text)[:64]


def client_patient(resource_id: str, identifiers: list[Identifier]) -> dict[str, Any]:
    """A client's Patient carrying ``identifiers`` (system and value)."""
    return {
        "resourceType": "Patient",
        "id": resource_id,
        "identifier": [{"system": i.system, "value": i.value} for i in identifiers],
    }


def drop_empty_system(body: Any) -> None:
    """An identifier with no system is written without one (`"system": ""` is not FHIR)."""
    if isinstance(body, list):
        for item in body:
            drop_empty_system(item)
    elif isinstance(body, dict):
        if body.get("system") == "" and "value" in body:
            del body["system"]
        for item in body.values():
            drop_empty_system(item)


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
