"""The scenario runner's channels share this base: the steps of a file through the application
service in process. The MLLP and FHIR channels (mllp.py, live.py, fhir.py, fhir_live.py) derive
from it and carry the steps their channel can carry."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import count
from typing import Any

from gateway.app.bootstrap import Gateway
from gateway.app.errors import NotLinkable, RequestConflict, ReviewClosed, UnknownReviewItem
from gateway.app.reads import RemsReads
from gateway.app.service import RemsService
from gateway.app.values import OrderEnded, Source
from gateway.mllp.intake import Hl7Intake
from gateway.scenarios.fhir_app import InProcessFhir
from gateway.scenarios.file import (
    WORKLIST_EXPECT,
    AdtStep,
    ReviewStep,
    Scenario,
    ScenarioError,
    Step,
    pid_values,
)
from gateway.scenarios.hooks import HookStep, send_hook
from gateway.scenarios.worklist_answers import worklist_fields
from mappings.hl7v2.ack import escape, finding_codes
from mappings.hl7v2.oru import patient_candidates
from mappings.hl7v2.senders import SenderConfig, SenderDirectory
from mappings.hl7v2.tokenizer import parse
from rems_core.identity import Candidate, resolved
from rems_core.model import Finding, Identifier
from rems_core.rda import DispenseFiled
from rems_core.rulepack import OutOfScope
from rems_core.store.review_repo import ReviewFilter
from rems_core.store.worklist_repo import TaskFilter

SOURCE = Source("scenario", "scenario-runner")
REQUESTED, IN_PROGRESS = "requested", "in-progress"  # an open task, an open draft
MANY = 100  # a patient's open tasks or drafts: a handful
ADT_STRUCTURE = {
    "A01": "ADT_A01", "A04": "ADT_A01", "A08": "ADT_A01", "A28": "ADT_A05", "A31": "ADT_A05",
    "A40": "ADT_A39", "A34": "ADT_A30", "A47": "ADT_A30",
}  # fmt: skip
VISIT_EVENTS = {"A01", "A04", "A08"}  # with a PV1 of the visit


def hl7_ts(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def pid_candidates(text: str, sender: SenderConfig) -> list[Candidate]:
    """The candidates the gateway reads from a PID-3 written as ``text`` (rules (a)–(d))."""
    msh = f"MSH|^~\\&|{sender.application}|{sender.facility}|REMS|REMS|||ORU^R01|1|P|2.5.1"
    pid = parse(f"{msh}\rPID|1||{text}\r").first("PID")
    return patient_candidates(pid, sender) if pid is not None else []


def adt_message(adt: AdtStep, sender: SenderConfig, control_id: str, at: datetime) -> str:
    """An ADT message in the style of fixtures/hl7/adt-*.hl7: MSH, EVN, PID (PV1, MRG)."""
    ts = hl7_ts(at)
    structure = ADT_STRUCTURE.get(adt.event, "ADT_A01")
    segments = [
        f"MSH|^~\\&|{escape(sender.application)}|{escape(sender.facility)}|REMS|REMS|{ts}||"
        f"ADT^{adt.event}^{structure}|{control_id}|P|2.5.1|||AL|NE",
        f"EVN|{adt.event}|{ts}",
        f"PID|1||{adt.pid}||Scenario^Patient",
    ]
    if adt.event in VISIT_EVENTS:
        segments.append("PV1|1|I")
    if adt.mrg is not None:
        segments.append(f"MRG|{adt.mrg}")
    return "\r".join(segments) + "\r"


def err_warnings(ack: str) -> list[dict[str, str]]:
    return [{"code": code, "text": ""} for code in finding_codes(ack)]


def ended_fields(ended: OrderEnded) -> dict[str, Any]:
    """A `cancel` step's result keys: whether the order was decided, its RDA voided, and why
    not (ORDER_NOT_FOUND)."""
    reasons = [f.as_dict() for f in ended.findings]
    return {"known": ended.known, "voided": ended.voided, "reasons": reasons, "warnings": []}


def shipment_fields(
    outcome: str, reasons: Sequence[Finding], warnings: Sequence[Finding]
) -> dict[str, Any]:
    """A `ship_check` step's result keys."""
    return {
        "outcome": outcome,
        "reasons": [f.as_dict() for f in reasons],
        "warnings": [f.as_dict() for f in warnings],
    }


def filed_fields(filed: DispenseFiled) -> dict[str, Any]:
    """A `dispensed` step's result keys: recorded, refused or ignored, and the findings."""
    return {
        "outcome": str(filed.outcome),
        "reasons": [f.as_dict() for f in filed.reasons],
        "warnings": [f.as_dict() for f in filed.warnings],
    }


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
        self.control_prefix = "SCN"
        self.control_ids = count(1)

    @property
    def sender(self) -> SenderConfig:
        """The sender the file's HL7 steps are read with (its `sender`, else the runner's)."""
        return self.scenario.sender

    def senders(self) -> SenderDirectory:
        return SenderDirectory(accept_unknown=True, senders=[self.sender])

    def control_id(self) -> str:
        return f"{self.control_prefix}{next(self.control_ids):04d}"

    def pid_text(self, text: str) -> str:
        """A `pid`/`mrg` text as it is sent (live runs tag its values)."""
        return text

    def candidates(self, step: Step) -> list[Candidate]:
        """A `pid` lab step's candidates, read with the file's sender."""
        return pid_candidates(self.pid_text(step.pid or ""), self.sender)

    def pid_identifiers(self, step: Step) -> list[Identifier]:
        """The identifiers a lab step's patient is found by: its handle's, or its `pid`'s."""
        if step.pid is None:
            return self.identifiers(step.patient)
        return resolved(self.candidates(step))

    def held_values(self) -> set[str] | None:
        """Whose open review items `held` counts: None, every one (the file's own database)."""
        return None

    def hints(self, step: Step, actual: dict[str, Any]) -> list[str]:
        """Lines added to a failed step's differences: why it may have failed here (a running
        gateway with another rule pack or time zone). In process the file's own apply: none."""
        return []

    def review_values(self, target: str) -> set[str]:
        """The identifier values a review step's `link`/`discard` names."""
        if target in self.scenario.handles:
            return {i.value for i in self.scenario.handles[target]}
        return set(pid_values(self.pid_text(target)))

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
            answer = await getattr(self, f"_{step.kind}")(step)
            if "held" in step.expect and "held" not in answer:
                answer["held"] = await self.held(self.held_values())
            if WORKLIST_EXPECT & set(step.expect):
                answer |= await self.worklist(step)
            return answer
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
        patient = self.identifiers(step.patient) if step.pid is None else self.candidates(step)
        outcome = await self.service.ingest_labs(patient, step.request, SOURCE, step.at)
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

    async def _cancel(self, step: Step) -> dict[str, Any]:
        ended = await self.service.end_order(step.request, SOURCE)
        return ended_fields(ended) | {"ack": "AA", "http_status": 200}

    async def _dispensed(self, step: Step) -> dict[str, Any]:
        filed = await self.service.record_dispense(step.request, SOURCE)
        return filed_fields(filed) | {"ack": "AA", "http_status": 201}

    async def _psf(self, step: Step) -> dict[str, Any]:
        """In process (and under MLLP) completing the open draft is an ordinary submission."""
        if step.completes_draft:
            await self.draft_to_complete(step)
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
        intake = Hl7Intake(self.service, self.senders())
        received = await intake.receive(step.body.encode("utf-8"), now=step.at)
        ack = received.ack or ""
        warnings = err_warnings(ack)
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

    async def _ship_check(self, step: Step) -> dict[str, Any]:
        """A shipment check (rules §10) through the service."""
        checked, _ = await self.service.check_shipment(step.request, SOURCE)
        return shipment_fields(checked.outcome.value, checked.reasons, checked.warnings) | {
            "rule_pack": checked.rule_pack,
            "http_status": 200,
        }

    async def _hook(self, step: Step) -> dict[str, Any]:
        """A CDS hook through the gateway's app without a socket (development auth)."""
        if self.fhir_app is None:
            self.fhir_app = InProcessFhir(self._application())
        hook: HookStep = step.request
        identifiers = self.identifiers(hook.patient) if hook.patient else None
        return await send_hook(self.fhir_app.http, hook, identifiers, step.at, lambda _: {})

    async def _adt(self, step: Step) -> dict[str, Any]:
        """An ADT message through the same intake as hl7 steps, without a socket."""
        if self.application is None:
            raise NotSupportedYet("an adt step goes through the HL7 intake on the database: --db")
        adt: AdtStep = step.request
        sent = AdtStep(adt.event, self.pid_text(adt.pid), adt.mrg and self.pid_text(adt.mrg))
        message = adt_message(sent, self.sender, self.control_id(), step.at)
        received = await Hl7Intake(self.service, self.senders()).receive(
            message.encode("utf-8"), now=step.at
        )
        return {"ack": received.code, "warnings": err_warnings(received.ack or "")}

    async def _review(self, step: Step) -> dict[str, Any]:
        """Link or discard every open review item whose candidates carry the values the step
        names, oldest first, through the service (an item filed by an earlier link is skipped)."""
        if self.application is None:
            raise NotSupportedYet("a review step goes through the service: needs --db")
        act: ReviewStep = step.request
        values = self.review_values(act.target)
        filed: list[str] = []
        for item in await self.open_items(values):
            try:
                if act.action == "discard":
                    await self.service.discard_review(item["id"], act.reason, SOURCE, step.at)
                    continue
                linked = await self.service.link_review(
                    item["id"], self._registry_id(step, act), self._identifier(act), SOURCE, step.at
                )
            except ReviewClosed:
                continue  # filed with an earlier item's identifier
            except (NotLinkable, UnknownReviewItem) as exc:
                raise ScenarioError(f"{step.label}: review item {item['id']}: {exc}") from None
            filed += [i for i in linked.attached.filed if i not in filed]
        return {"filed": len(filed), "held": len(await self.open_items(values))}

    def _registry_id(self, step: Step, act: ReviewStep) -> str:
        if act.to not in self.patient_ids:
            raise ScenarioError(f"{step.label}: `to: {act.to}` is not a patient of the registry")
        return self.patient_ids[act.to]

    def _identifier(self, act: ReviewStep) -> Identifier | None:
        if act.identifier is None:
            return None
        (value,) = pid_values(self.pid_text(act.identifier.value)) or [act.identifier.value]
        return Identifier(act.identifier.system, value)

    def registry_id(self, step: Step) -> str:
        """The registry id of the step's patient, whose worklist `tasks` and `draft` read."""
        handle = str(step.patient)
        if handle not in self.patient_ids:
            raise ScenarioError(f"{step.label}: {handle} is not a patient of the registry")
        return self.patient_ids[handle]

    async def worklist(self, step: Step) -> dict[str, Any]:
        """`tasks` and `draft`: the patient's open tasks and monthly draft after the step."""
        return worklist_fields(step, await self.open_tasks(step), await self.open_drafts(step))

    async def open_tasks(self, step: Step) -> list[dict[str, Any]]:
        """The patient's requested Tasks, through the reads on the database."""
        wanted = TaskFilter(patient_id=self.registry_id(step), status=REQUESTED, count=MANY)
        found, _ = await self.reads.tasks(wanted)
        return [task.body for task in found]

    async def open_drafts(self, step: Step) -> list[dict[str, Any]]:
        """The patient's `in-progress` QuestionnaireResponses: the open monthly drafts."""
        found, _ = await self.reads.responses(self.registry_id(step), IN_PROGRESS, MANY, 0)
        return [response.body for response in found]

    async def draft_to_complete(self, step: Step) -> dict[str, Any]:
        """The open draft a `complete_draft` psf step completes; a step error without one."""
        drafts = await self.open_drafts(step)
        if not drafts:
            raise ScenarioError(f"{step.label}: complete_draft: the patient has no open draft")
        return drafts[0]

    async def open_items(self, values: set[str] | None) -> list[dict[str, Any]]:
        """Open review items, oldest first; with ``values``, those whose candidates carry one."""
        items: list[dict[str, Any]] = []
        while True:
            page, total = await self.reads.review_items(ReviewFilter(count=100, offset=len(items)))
            items += page
            if not page or len(items) >= total:
                break
        if values is None:
            return items
        return [i for i in items if values & {c.get("value") for c in i["candidates"] or ()}]

    async def held(self, values: set[str] | None) -> int:
        if self.application is None:
            raise NotSupportedYet("`held` is read from the review queue: needs --db")
        return len(await self.open_items(values))
