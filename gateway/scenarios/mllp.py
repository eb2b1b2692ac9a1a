"""Scenario steps as HL7 v2 over MLLP (docs/contracts.md §2, `--via mllp`).

`lab` steps become ORU^R01 messages, `dispense` steps RDE^O11 and `hl7` steps are sent as they
are; the runner reads `warnings` from the ACK's ERR segments and `anc`/`category` from what the
gateway stored; of an RRE, `outcome`, `rda`, `reasons` and `warnings` (ORC-16, ORC-3, ERR E/W),
and `max_days_supply`, `override_possible` and `rule_pack` from the decision stored for its
placer number. Steps that MLLP does not carry (psf, sign, advance_to) go through the application
service on the same database, as docs/contracts.md §2 says; `tasks` and `draft` are read there
too (channel.py).

``MllpChannel`` runs its own listener on a loopback port, in this process;
``gateway.scenarios.live.LiveMllpChannel`` sends to a separately running gateway.
"""

from __future__ import annotations

from typing import Any

from gateway.app.bootstrap import Gateway
from gateway.mllp.client import send
from gateway.mllp.listener import Hl7Listener
from gateway.mllp.server import MllpSettings
from gateway.scenarios.channel import (
    InProcessChannel,
    NotSupportedYet,
    adt_message,
    hl7_ts,
)
from gateway.scenarios.file import DEFAULT_DRUG, DEFAULT_SENDER, AdtStep, Scenario, Step
from mappings.hl7v2.ack import escape, finding_codes
from mappings.hl7v2.oru import patient_identifiers
from mappings.hl7v2.senders import SenderConfig, SenderDirectory
from mappings.hl7v2.tokenizer import HL7ParseError, parse
from rems_core.model import DispenseRequest, Identifier, LabResult, Override, ResultStatus, Setting
from rems_core.rda import DispenseRecord, OrderAction, OrderEnd

SENDER = DEFAULT_SENDER
UNKNOWN_SYSTEM = "urn:rems-gateway:scenario-unknown"
STATUS = {
    ResultStatus.FINAL: "F",
    ResultStatus.CORRECTED: "C",
    ResultStatus.PRELIMINARY: "P",
    ResultStatus.CANCELLED: "X",
}


class Hl7Channel(InProcessChannel):
    """Lab and hl7 steps as HL7 v2 messages over MLLP; how they travel is the subclass's."""

    def __init__(self, application: Gateway, scenario: Scenario, sender: SenderConfig) -> None:
        super().__init__(application, scenario)
        self._sender = sender

    @property
    def sender(self) -> SenderConfig:
        return self._sender

    async def _exchange(self, message: str) -> str:
        raise NotImplementedError

    def outgoing(self, message: str) -> str:
        """A raw hl7 step's text as it is sent (live runs rewrite identifiers)."""
        return message

    def _namespace(self, system: str) -> str:
        """PID-3 CX-4.1 for a system that is not an OID: the sender's map read backwards."""
        for namespace, mapped in self.sender.assigning_authorities.items():
            if mapped == system:
                return namespace
        return "NS-UNKNOWN"

    def _cx(self, identifier: Identifier) -> str:
        value = escape(identifier.value)
        if identifier.system.startswith("urn:oid:"):
            return f"{value}^^^&{identifier.system.removeprefix('urn:oid:')}&ISO"
        return f"{value}^^^{escape(self._namespace(identifier.system))}"

    def oru(self, step: Step, results: list[LabResult]) -> str:
        if step.pid is not None:
            pid3 = self.pid_text(step.pid)
        else:
            pid3 = "~".join(self._cx(i) for i in self.identifiers(step.patient))
        control = self.control_id()
        application, facility = escape(self.sender.application), escape(self.sender.facility)
        segments = [
            f"MSH|^~\\&|{application}|{facility}|REMS|REMS|{hl7_ts(step.at)}||ORU^R01^ORU_R01|"
            f"{control}|P|2.5.1||||||UNICODE UTF-8",
            f"PID|1||{pid3}",
            f"OBR|1||{escape(results[0].specimen or '')}|CBC",
        ]
        segments += [obx(n, result) for n, result in enumerate(results, start=1)]
        return "\r".join(segments) + "\r"

    async def _labs(self, step: Step) -> dict[str, Any]:
        ack = await self._exchange(self.oru(step, step.request))
        stored = await self._stored(step)
        first = stored[0] if stored else None
        return {
            **ack_fields(ack),
            "anc": first.anc if first else None,
            "category": first.category.value if first and first.category else None,
            "derived": first.derived if first else None,
            "usable": first.usable if first else None,
        }

    def rde(self, step: Step, request: DispenseRequest, placer: str) -> str:
        """An RDE^O11 as an inpatient pharmacy system writes one: the setting in ORC-29, a
        discharge as an inpatient visit discharged (PV1-45) on the order's day, the days supply in
        TQ1-6, the pharmacy in RXE-40, an override as REMS-OVERRIDE and ANC OBX segments."""
        ts = hl7_ts(step.at)
        application, facility = escape(self.sender.application), escape(self.sender.facility)
        pid3 = "~".join(self._cx(i) for i in self.identifiers(step.patient))
        setting = "I" if request.setting == Setting.INPATIENT else "O"
        orc = ["ORC", "NW", escape(placer), *[""] * 6, ts, "", ""]
        orc += [f"{escape(request.prescriber_npi)}^^^^^^^^NPI", *[""] * 16, setting]
        rxe = ["RXE", "", f"{escape(request.drug)}^^RXNORM", *[""] * 37]
        rxe.append(f"{escape(request.pharmacy_npi)}^^NPI" if request.pharmacy_npi else "")
        segments = [
            f"MSH|^~\\&|{application}|{facility}|REMS|REMS|{ts}||RDE^O11^RDE_O11|"
            f"{self.control_id()}|P|2.5.1||||||UNICODE UTF-8",
            f"PID|1||{pid3}",
        ]
        if request.discharge:
            segments.append("|".join(["PV1", "1", "I", *[""] * 42, ts]))
        segments += ["|".join(orc), "|".join(rxe), f"TQ1|1|||||{request.days_supply}^d"]
        if request.override is not None:
            segments += override_obx(request.override)
        return "\r".join(segments) + "\r"

    async def _dispense(self, step: Step) -> dict[str, Any]:
        request: DispenseRequest = step.request
        placer = request.request_id or f"{self.control_prefix}-RX-{step.index}"
        answer = order_fields(await self._exchange(self.rde(step, request, placer)))
        stored = await self.reads.decision_for_request(placer) if answer["outcome"] else None
        keys = ("max_days_supply", "override_possible", "rule_pack")
        return answer | ({key: stored[key] for key in keys} if stored else {})

    def _pharmacy_header(self, step: Step, kind: str) -> list[str]:
        ts = hl7_ts(step.at)
        application, facility = escape(self.sender.application), escape(self.sender.facility)
        pid3 = "~".join(self._cx(i) for i in self.identifiers(step.patient))
        return [
            f"MSH|^~\\&|{application}|{facility}|REMS|REMS|{ts}||{kind}|"
            f"{self.control_id()}|P|2.5.1||||||UNICODE UTF-8",
            f"PID|1||{pid3}",
        ]

    async def _cancel(self, step: Step) -> dict[str, Any]:
        """ORC-1 CA (or DC) in an RDE^O11 naming the order's placer number."""
        end: OrderEnd = step.request
        control = "DC" if end.action == OrderAction.DISCONTINUE else "CA"
        orc = ["ORC", control, escape(end.request_id), *[""] * 6, hl7_ts(step.at)]
        segments = [
            *self._pharmacy_header(step, "RDE^O11^RDE_O11"),
            "|".join(orc),
            f"RXE||{DEFAULT_DRUG}^^RXNORM",
        ]
        answer = await self._exchange("\r".join(segments) + "\r")
        fields = order_fields(answer)
        orc_1 = next((s.split("|")[1] for s in answer.split("\r") if s.startswith("ORC|")), "")
        return {**ack_fields(answer), "known": orc_1 in ("CR", "DR"), "reasons": fields["reasons"]}

    async def _dispensed(self, step: Step) -> dict[str, Any]:
        """An RDS^O13 naming the order's placer number (no RDA number: found by the order)."""
        record: DispenseRecord = step.request
        ts = hl7_ts(step.at)
        segments = [
            *self._pharmacy_header(step, "RDS^O13^RDS_O13"),
            f"ORC|RE|{escape(record.request_id or '')}||||||{ts}",
            f"TQ1|1|||||{record.days_supply}^d",
            f"RXD|1|{escape(record.drug)}^^RXNORM|{ts}|{record.quantity}",
        ]
        fields = order_fields(await self._exchange("\r".join(segments) + "\r"))
        orc_ok = not fields["reasons"]
        return fields | {"outcome": "recorded" if orc_ok else "refused"}

    async def _hl7(self, step: Step) -> dict[str, Any]:
        text = self.outgoing(str(step.body).replace("\r\n", "\r").replace("\n", "\r"))
        ack = await self._exchange(text)
        stored = await self._stored(step, self._patient_of(text))
        first = stored[0] if stored else None
        return {
            **ack_fields(ack),
            "anc": first.anc if first else None,
            "category": first.category.value if first and first.category else None,
        }

    async def _fhir(self, step: Step) -> dict[str, Any]:
        raise NotSupportedYet("a fhir step: --via mllp skips it (docs/contracts.md §2)")

    async def _adt(self, step: Step) -> dict[str, Any]:
        adt: AdtStep = step.request
        sent = AdtStep(adt.event, self.pid_text(adt.pid), adt.mrg and self.pid_text(adt.mrg))
        ack = await self._exchange(adt_message(sent, self.sender, self.control_id(), step.at))
        fields = ack_fields(ack)
        return {"ack": fields["ack"], "warnings": fields["warnings"]}

    def _patient_of(self, text: str) -> list[Identifier]:
        """The identifiers the gateway reads from the message's PID-3."""
        try:
            pid = parse(text).first("PID")
        except HL7ParseError:
            return []
        return patient_identifiers(pid, self.sender) if pid else []

    async def _stored(self, step: Step, identifiers: list[Identifier] | None = None) -> list[Any]:
        identifiers = identifiers if identifiers is not None else self.pid_identifiers(step)
        return await self.reads.ancs_received(identifiers, step.at)


class MllpChannel(Hl7Channel):
    """A real MLLP listener on a loopback port in this process, on the runner's database."""

    def __init__(self, application: Gateway, scenario: Scenario) -> None:
        systems = sorted(
            {i.system for ids in scenario.handles.values() for i in ids} | {UNKNOWN_SYSTEM}
        )
        namespaces = {system: f"NS{n}" for n, system in enumerate(systems)}
        mapped = {ns: system for system, ns in namespaces.items()}
        file_sender = scenario.sender  # the file's own map wins over the runner's NS<n>
        sender = file_sender.model_copy(
            update={"assigning_authorities": {**mapped, **file_sender.assigning_authorities}}
        )
        super().__init__(application, scenario, sender)
        directory = SenderDirectory(accept_unknown=True, senders=[sender])
        self.listener = Hl7Listener(
            application.service, directory, MllpSettings(port=0), clock="message"
        )

    async def open(self) -> None:
        await self.listener.start()

    async def close(self) -> None:
        await self.listener.stop()

    async def _exchange(self, message: str) -> str:
        (ack,) = await send("127.0.0.1", self.listener.server.port, [message.encode("utf-8")])
        return ack.decode("utf-8")


def obx(n: int, result: LabResult) -> str:
    fields = ["OBX", str(n), "NM", f"{escape(result.code)}^^LN", "", escape(result.value)]
    fields += [escape(result.unit), "", "", "", "", STATUS[result.status], "", ""]
    return "|".join([*fields, hl7_ts(result.drawn)])


def override_obx(override: Override) -> list[str]:
    """The pharmacist override in the order's group (docs/contracts.md §4): rationale and the
    agreeing prescriber on the REMS-OVERRIDE OBX, the ANC the pharmacist holds on its own."""
    npi = f"{escape(override.prescriber_npi)}^^^^^^^^NPI" if override.prescriber_npi else ""
    marker = ["OBX", "1", "TX", "REMS-OVERRIDE^Pharmacist override^99REMS", ""]
    marker += [escape(override.rationale or ""), *[""] * 5, "F", *[""] * 4, npi]
    segments = ["|".join(marker).rstrip("|")]
    if override.anc is not None:
        anc = override.anc
        fields = ["OBX", "2", "NM", f"{escape(anc.code)}^^LN", "", escape(anc.value)]
        fields += [escape(anc.unit), "", "", "", "", "F", "", "", hl7_ts(anc.drawn)]
        segments.append("|".join(fields))
    return segments


def order_fields(answer: str) -> dict[str, Any]:
    """`ack`, `outcome`, `rda`, `reasons` (ERR severity E) and `warnings` (W) of an RRE with one
    order. Without an outcome no decision was made: the reasons are the refusal's (none for a
    placer number used for another order, as the service's refusal has none)."""
    segments = [s.split("|") for s in answer.split("\r") if s]
    orc = next((s for s in segments if s[0] == "ORC"), [])
    outcome = orc[16].split("^")[0] if len(orc) > 16 else None
    rda = orc[3].split("^")[0] if len(orc) > 3 and orc[3] else None
    errs = [s for s in segments if s[0] == "ERR" and len(s) > 5 and s[5]]
    found = {
        severity: [{"code": s[5].split("^")[0], "text": ""} for s in errs if s[4] == severity]
        for severity in ("E", "W")
    }
    return {
        **ack_fields(answer),
        "outcome": outcome,
        "rda": rda,
        "reasons": [r for r in found["E"] if outcome or r["code"] != "REQUEST_ID_CONFLICT"],
        "warnings": found["W"],
    }


def ack_fields(ack: str) -> dict[str, Any]:
    segments = [s.split("|") for s in ack.split("\r") if s]
    msa = next((s for s in segments if s[0] == "MSA"), ["MSA", ""])
    code = {"CA": "AA", "CE": "AE", "CR": "AR"}.get(msa[1], msa[1])
    warnings = [{"code": found, "text": ""} for found in finding_codes(ack)]
    return {"ack": code, "warnings": warnings, "http_status": None}
