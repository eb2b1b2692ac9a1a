"""Scenario steps as FHIR R4 over HTTP (contracts.md §2, `--via fhir`).

`lab` steps become an Observation (`POST /fhir/Observation`), `labs` steps a transaction Bundle
of a DiagnosticReport and its Observations (`POST /fhir`), each with `X-Clinical-Time: <at>` and
`Prefer: return=OperationOutcome`; the runner reads `anc`, `category` and `warnings` from the
OperationOutcome, `derived` and `usable` from what the gateway stored. `fhir` steps (a resource
or a Bundle) are posted as written; `hl7` steps are skipped with a notice. Dispense, psf, sign and
advance_to go through the application service on the same database.

``FhirChannel`` runs the gateway's app on a real uvicorn server on a loopback port, in this
process, on the runner's service (development auth, the message clock).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
import uuid
from decimal import Decimal
from typing import Any

import httpx
import uvicorn

from gateway.scenario import InProcessChannel, NotSupportedYet
from gateway.scenario_file import Scenario, ScenarioError, Step
from gateway.service import RemsService
from mappings.fhir.outcome import ANC_EXTENSION, CATEGORY_EXTENSION, REMS_CODES
from rems_core.model import Identifier, LabResult, ResultStatus

FHIR_JSON = "application/fhir+json"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SPECIMEN_SYSTEM = ""  # the scenario's accession ids are bare values, as on the HL7 channel
STATUS = {
    ResultStatus.FINAL: "final",
    ResultStatus.CORRECTED: "corrected",
    ResultStatus.PRELIMINARY: "preliminary",
    ResultStatus.CANCELLED: "cancelled",
}
LABORATORY = [
    {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "laboratory",
            }
        ]
    }
]
NUMBER = re.compile(r"^(<=|>=|<|>)?\s*(-?\d+(\.\d+)?)$")


# --- scenario steps as FHIR resources ---------------------------------------------------------


class Decimals:
    """Exact decimal values in the JSON sent (0.80 stays 0.80, never a binary float)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def number(self, text: str) -> str:
        marker = f"__decimal_{len(self.values)}__"
        self.values[marker] = str(Decimal(text))
        return marker

    def dumps(self, body: dict[str, Any]) -> bytes:
        text = json.dumps(body, ensure_ascii=False)
        for marker, value in self.values.items():
            text = text.replace(f'"{marker}"', value)
        return text.encode("utf-8")


def observation(result: LabResult, subject: Identifier, numbers: Decimals) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "status": STATUS[result.status],
        "category": LABORATORY,
        "code": {"coding": [{"system": LOINC, "code": result.code}]},
        "subject": {"identifier": {"system": subject.system, "value": subject.value}},
        "effectiveDateTime": result.drawn.isoformat(),
    }
    if result.specimen:
        body["specimen"] = {"identifier": {"value": result.specimen}}
    body |= _value(result, numbers)
    return body


def _value(result: LabResult, numbers: Decimals) -> dict[str, Any]:
    """valueQuantity for a number (with its comparator), valueString for anything else."""
    if result.value == "":
        return {}
    found = NUMBER.match(result.value.strip())
    if found is None:
        return {"valueString": result.value}
    quantity: dict[str, Any] = {"value": numbers.number(found.group(2))}
    if found.group(1):
        quantity["comparator"] = found.group(1)
    if result.unit:
        quantity |= {"unit": result.unit, "system": UCUM, "code": result.unit}
    return {"valueQuantity": quantity}


def report_bundle(results: list[LabResult], subject: Identifier, numbers: Decimals) -> dict:
    """A transaction: a DiagnosticReport (the step's specimen as its identifier) listing its
    Observations by `urn:uuid:` fullUrls."""
    urls = [uuid.uuid4().urn for _ in results]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "57021-8"}]},  # CBC with differential
        "subject": {"identifier": {"system": subject.system, "value": subject.value}},
        "effectiveDateTime": results[0].drawn.isoformat(),
        "result": [{"reference": url} for url in urls],
    }
    if results[0].specimen:
        report["identifier"] = [{"value": results[0].specimen}]
    entries = [_entry(uuid.uuid4().urn, report)]
    entries += [
        _entry(url, observation(r, subject, numbers)) for url, r in zip(urls, results, strict=True)
    ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _entry(full_url: str, resource: dict[str, Any]) -> dict[str, Any]:
    method = {"method": "POST", "url": resource["resourceType"]}
    return {"fullUrl": full_url, "resource": resource, "request": method}


# --- what the gateway answered --------------------------------------------------------------


def outcome_issues(status: int, body: Any) -> list[dict[str, Any]]:
    """The issues of an OperationOutcome, or of every entry's outcome of a Bundle answer."""
    if not isinstance(body, dict):
        return []
    if body.get("resourceType") == "Bundle":
        return [
            issue
            for entry in body.get("entry") or []
            for issue in (entry.get("response", {}).get("outcome") or {}).get("issue") or []
        ]
    return list(body.get("issue") or []) if body.get("resourceType") == "OperationOutcome" else []


def lab_fields(status: int, body: Any) -> dict[str, Any]:
    """`anc`, `category`, `warnings` and `http_status` of an answer (mappings/fhir/outcome.py
    puts the ANC and its category in issue extensions, our codes in details.coding)."""
    anc = category = None
    warnings = []
    for issue in outcome_issues(status, body):
        values = {e.get("url"): e for e in issue.get("extension") or []}
        if anc is None and ANC_EXTENSION in values:
            anc = values[ANC_EXTENSION]["valueQuantity"]["value"]
            category = values.get(CATEGORY_EXTENSION, {}).get("valueCode")
        for coding in (issue.get("details") or {}).get("coding") or []:
            if coding.get("system") == REMS_CODES:
                warnings.append({"code": coding["code"], "text": issue.get("diagnostics", "")})
    failed = status >= 400 or _entry_failed(body)
    return {
        "anc": anc,
        "category": category,
        "warnings": warnings,
        "http_status": status,
        "ack": "AE" if failed else "AA",
    }


def _entry_failed(body: Any) -> bool:
    entries = body.get("entry") or [] if isinstance(body, dict) else []
    return any(not str(e.get("response", {}).get("status", "2")).startswith("2") for e in entries)


# --- the channel ------------------------------------------------------------------------------


class FhirChannel(InProcessChannel):
    """Lab, labs and fhir steps over HTTP to the gateway's FHIR endpoint; the rest through the
    service. How the endpoint is reached is ``open``'s."""

    def __init__(self, service: RemsService, scenario: Scenario) -> None:
        super().__init__(service, scenario)
        self.http: httpx.AsyncClient | None = None
        self.server: LoopbackGateway | None = None
        self.skipped_hl7: Step | None = None

    async def run(self, step: Step) -> dict[str, Any]:
        # What a skipped hl7 step would have stored is missing, so later answers would differ
        # from the file's for no fault of the gateway's: they are skipped too, and say why.
        if self.skipped_hl7 is not None:
            raise NotSupportedYet(f"follows the skipped hl7 step {self.skipped_hl7.index}")
        return await super().run(step)

    async def open(self) -> None:
        self.server = LoopbackGateway(self.service)
        base = await asyncio.to_thread(self.server.start)
        self.http = httpx.AsyncClient(base_url=f"{base}/fhir", timeout=30)

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)

    async def _post(self, path: str, content: bytes, step: Step) -> tuple[int, Any]:
        assert self.http is not None
        headers = {
            "Content-Type": FHIR_JSON,
            "X-Clinical-Time": step.at.isoformat(),
            "Prefer": "return=OperationOutcome",
        }
        response = await self.http.post(path, content=content, headers=headers)
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, None

    async def _labs(self, step: Step) -> dict[str, Any]:
        numbers = Decimals()
        subject = self.identifiers(step.patient)[0]
        results: list[LabResult] = step.request
        if step.kind == "lab":
            body = observation(results[0], subject, numbers)
            status, answer = await self._post("/Observation", numbers.dumps(body), step)
        else:
            bundle = report_bundle(results, subject, numbers)
            status, answer = await self._post("", numbers.dumps(bundle), step)
        return lab_fields(status, answer) | await self._stored(step)

    async def _stored(self, step: Step) -> dict[str, Any]:
        """`derived` and `usable` of the first ANC the step's results gave, as stored."""
        identifiers = self.identifiers(step.patient)

        def read(store: Any) -> list[Any]:
            patient = store.find_patient(identifiers)
            if patient is None:
                return []
            return [a for a in store.anc_results(patient.rems_id) if a.received == step.at]

        stored = await self.service.read(read)
        first = stored[0] if stored else None
        return {
            "derived": first.derived if first else None,
            "usable": first.usable if first else None,
        }

    async def _fhir(self, step: Step) -> dict[str, Any]:
        """A resource or Bundle as written: a Bundle to the base, a resource to its type."""
        if not isinstance(step.body, dict) or "resourceType" not in step.body:
            raise ScenarioError(f"{step.label}: a fhir step is a resource with its resourceType")
        kind = str(step.body["resourceType"])
        path = "" if kind == "Bundle" else f"/{kind}"
        content = json.dumps(step.body, default=str, ensure_ascii=False).encode("utf-8")
        status, answer = await self._post(path, content, step)
        return lab_fields(status, answer)

    async def _hl7(self, step: Step) -> dict[str, Any]:
        self.skipped_hl7 = step
        raise NotSupportedYet("an hl7 step: --via fhir skips it (contracts.md §2)")


class LoopbackGateway:
    """The gateway's app on a real uvicorn server on a free loopback port, in a thread of this
    process, on the runner's service (development auth, `--clock message`)."""

    def __init__(self, service: RemsService) -> None:
        self.service = service
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> str:
        from gateway.app import GatewayState, create_app
        from gateway.config import Settings

        settings = Settings(
            auth="development",
            clock="message",
            host="127.0.0.1",
            mllp_port=free_port(),  # the app's MLLP listener: unused here, but never in the way
            timezone=str(self.service.tz),
        )
        writer = self.service.writer
        app = create_app(self.service, settings, GatewayState(writer.engine, writer))
        port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise ScenarioError("the FHIR endpoint did not start")
            time.sleep(0.01)
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
