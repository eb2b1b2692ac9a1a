"""The scenario runner's channels share this base: the steps of a file through the application
service in process. The MLLP and FHIR channels (mllp.py, live.py, fhir.py, fhir_live.py) derive
from it and carry the steps their channel can carry."""

from __future__ import annotations

from typing import Any

from gateway.app.bootstrap import Gateway
from gateway.app.errors import RequestConflict
from gateway.app.reads import RemsReads
from gateway.app.service import RemsService
from gateway.app.values import Source
from gateway.mllp.intake import Hl7Intake
from gateway.scenarios.fhir_app import InProcessFhir
from gateway.scenarios.file import Scenario, ScenarioError, Step
from mappings.hl7v2.senders import SenderDirectory
from rems_core.model import Identifier
from rems_core.rulepack import OutOfScope

SOURCE = Source("scenario", "scenario-runner")


class NotSupportedYet(RuntimeError):
    """A step this channel cannot carry: reported as skipped, with the reason."""


class InProcessChannel:
    """Runs steps through the application service, without a network."""

    def __init__(self, application: Gateway | None, scenario: Scenario) -> None:
        self.application = application  # None: a live FHIR run without --db
        self.scenario = scenario
        self.patient_ids: dict[str, str] = {}
        self.fhir_app: InProcessFhir | None = None  # made by the first fhir step
        self.skipped_raw: Step | None = None  # an hl7 or fhir step this channel does not carry

    @property
    def service(self) -> RemsService:
        return self._application().service

    @property
    def reads(self) -> RemsReads:
        return self._application().reads

    def _application(self) -> Gateway:
        if self.application is None:
            raise ScenarioError("this step needs the gateway's database (--db)")
        return self.application

    def identifiers(self, handle: Any) -> list[Identifier]:
        known = self.scenario.handles.get(str(handle))
        return known or [Identifier("urn:rems-gateway:scenario-unknown", str(handle))]

    async def open(self) -> None:
        """Nothing to open in process."""

    async def close(self) -> None:
        """The in-process FHIR app's client, if a fhir step made one."""
        if self.fhir_app is not None:
            await self.fhir_app.close()

    async def load_registry(self) -> None:
        self.patient_ids = await self.service.load_registry(self.scenario.registry, SOURCE)

    async def run(self, step: Step) -> dict[str, Any]:
        # What a skipped raw step (hl7 over FHIR, fhir over MLLP) would have stored is missing,
        # so later answers would differ from the file's for no fault of the gateway's: they are
        # skipped too, and say why.
        if self.skipped_raw is not None:
            skipped = self.skipped_raw
            raise NotSupportedYet(f"follows the skipped {skipped.kind} step {skipped.index}")
        try:
            return await getattr(self, f"_{step.kind}")(step)
        except NotSupportedYet:
            if step.kind in ("hl7", "fhir"):
                self.skipped_raw = step
            raise
        except RequestConflict as exc:
            return {"reasons": [], "http_status": 409, "ack": "AE", "error": str(exc)}
        except OutOfScope as exc:
            reason = {"code": OutOfScope.code, "text": str(exc)}
            refused = {"reasons": [reason], "http_status": 422, "ack": "AE"}
            if step.kind in ("psf", "sign"):
                refused |= {"accepted": False, "status": "rejected"}
            return refused

    async def _lab(self, step: Step) -> dict[str, Any]:
        return await self._labs(step)

    async def _labs(self, step: Step) -> dict[str, Any]:
        outcome = await self.service.ingest_labs(
            self.identifiers(step.patient), step.request, SOURCE, step.at
        )
        warnings = [w.as_dict() for w in outcome.warnings]
        warnings += [w.as_dict() for r in outcome.results for w in r.warnings]
        first = outcome.results[0] if outcome.results else None
        return {
            "anc": first.anc if first else None,
            "category": first.category.value if first and first.category else None,
            "derived": first.derived if first else None,
            "usable": first.usable if first else None,
            "warnings": warnings,
            "ack": "AA",
            "http_status": 201,
        }

    async def _dispense(self, step: Step) -> dict[str, Any]:
        decision = await self.service.decide_dispense(
            self.identifiers(step.patient), step.request, SOURCE
        )
        return {**decision.as_dict(), "ack": "AA", "http_status": 201}

    async def _psf(self, step: Step) -> dict[str, Any]:
        outcome = await self.service.submit_psf(
            self.identifiers(step.patient), step.request, SOURCE
        )
        return {**outcome.as_dict(), "ack": "AA", "http_status": 201}

    async def _sign(self, step: Step) -> dict[str, Any]:
        signer, psf_id = step.request
        outcome = await self.service.sign_psf(
            self.identifiers(step.patient), signer, step.at, SOURCE, psf_id
        )
        return {**outcome.as_dict(), "ack": "AA", "http_status": 200}

    async def _advance_to(self, step: Step) -> dict[str, Any]:
        handles = [step.patient] if step.patient else list(self.scenario.handles)
        ids = [self.patient_ids[h] for h in handles if h in self.patient_ids]
        found = await self.service.run_scheduled(step.request, ids)
        return {"warnings": [f.as_dict() for items in found.values() for f in items]}

    async def _hl7(self, step: Step) -> dict[str, Any]:
        """A raw message through the same HL7 mapping as the MLLP listener, without a socket."""
        if not isinstance(step.body, str):
            raise ScenarioError(f"{step.label}: an hl7 step is the message text")
        intake = Hl7Intake(self.service, SenderDirectory(accept_unknown=True))
        received = await intake.receive(step.body.encode("utf-8"), now=step.at)
        ack = received.ack or ""
        warnings = [
            {"code": err.split("|")[5].split("^")[0], "text": ""}
            for err in ack.split("\r")
            if err.startswith("ERR|") and len(err.split("|")) > 5 and err.split("|")[5]
        ]
        results = received.outcome.results if received.outcome else ()
        first = results[0] if results else None
        return {
            "ack": received.code,
            "warnings": warnings,
            "anc": first.anc if first else None,
            "category": first.category.value if first and first.category else None,
            "derived": first.derived if first else None,
            "usable": first.usable if first else None,
            "http_status": None,
        }

    async def _fhir(self, step: Step) -> dict[str, Any]:
        """A resource or Bundle through the same FHIR mapping and service as the HTTP endpoint,
        without a socket (the app through httpx's ASGI transport, development auth)."""
        if self.fhir_app is None:
            self.fhir_app = InProcessFhir(self._application())
        patient = step.patient
        return await self.fhir_app.run(step, self.identifiers(patient) if patient else None)
