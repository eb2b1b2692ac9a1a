"""Scenario steps through a real MLLP listener on a loopback port (contracts.md §2, `--via mllp`).

`lab` steps become ORU^R01 messages and `hl7` steps are sent as they are; the runner reads
`warnings` from the ACK's ERR segments and `anc`/`category` from what the gateway stored. Steps
that MLLP does not carry (dispense, psf, sign, advance_to) go through the application service on
the same database, as contracts.md §2 says.
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import count
from typing import Any

from gateway.mllp import MllpSettings
from gateway.mllp_client import send
from gateway.mllp_listener import Hl7Listener
from gateway.scenario import InProcessChannel
from gateway.scenario_file import Scenario, Step
from gateway.service import RemsService
from mappings.hl7v2.ack import escape
from mappings.hl7v2.oru import patient_identifiers
from mappings.hl7v2.senders import SenderConfig, SenderDirectory
from mappings.hl7v2.tokenizer import HL7ParseError, parse
from rems_core.model import Identifier, LabResult, ResultStatus

SENDER = ("SCENARIO", "RUNNER")
STATUS = {
    ResultStatus.FINAL: "F",
    ResultStatus.CORRECTED: "C",
    ResultStatus.PRELIMINARY: "P",
    ResultStatus.CANCELLED: "X",
}


def hl7_ts(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


class MllpChannel(InProcessChannel):
    def __init__(self, service: RemsService, scenario: Scenario) -> None:
        super().__init__(service, scenario)
        systems = sorted(
            {i.system for ids in scenario.handles.values() for i in ids}
            | {"urn:rems-gateway:scenario-unknown"}
        )
        self.namespaces = {system: f"NS{n}" for n, system in enumerate(systems)}
        sender = SenderConfig(
            application=SENDER[0],
            facility=SENDER[1],
            assigning_authorities={ns: system for system, ns in self.namespaces.items()},
        )
        self.sender = sender
        directory = SenderDirectory(accept_unknown=True, senders=[sender])
        self.listener = Hl7Listener(service, directory, MllpSettings(port=0), clock="message")
        self.control_ids = count(1)

    async def open(self) -> None:
        await self.listener.start()

    async def close(self) -> None:
        await self.listener.stop()

    async def _exchange(self, message: str) -> str:
        (ack,) = await send("127.0.0.1", self.listener.server.port, [message.encode("utf-8")])
        return ack.decode("utf-8")

    def _cx(self, identifier: Identifier) -> str:
        value = escape(identifier.value)
        if identifier.system.startswith("urn:oid:"):
            return f"{value}^^^&{identifier.system.removeprefix('urn:oid:')}&ISO"
        return f"{value}^^^{self.namespaces.get(identifier.system, 'NS-UNKNOWN')}"

    def oru(self, step: Step, results: list[LabResult]) -> str:
        pid3 = "~".join(self._cx(i) for i in self.identifiers(step.patient))
        control = f"SCN{next(self.control_ids):06d}"
        segments = [
            f"MSH|^~\\&|{SENDER[0]}|{SENDER[1]}|REMS|REMS|{hl7_ts(step.at)}||ORU^R01^ORU_R01|"
            f"{control}|P|2.5.1||||||UNICODE UTF-8",
            f"PID|1||{pid3}",
            f"OBR|1||{escape(results[0].specimen or '')}|CBC",
        ]
        for n, result in enumerate(results, start=1):
            segments.append(
                "|".join(
                    [
                        "OBX",
                        str(n),
                        "NM",
                        f"{escape(result.code)}^^LN",
                        "",
                        escape(result.value),
                        escape(result.unit),
                        "",
                        "",
                        "",
                        "",
                        STATUS[result.status],
                        "",
                        "",
                        hl7_ts(result.drawn),
                    ]
                )
            )
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

    async def _hl7(self, step: Step) -> dict[str, Any]:
        text = str(step.body).replace("\r\n", "\r").replace("\n", "\r")
        ack = await self._exchange(text)
        stored = await self._stored(step, self._patient_of(text))
        first = stored[0] if stored else None
        return {
            **ack_fields(ack),
            "anc": first.anc if first else None,
            "category": first.category.value if first and first.category else None,
        }

    def _patient_of(self, text: str) -> list[Identifier]:
        """The identifiers the gateway reads from the message's PID-3."""
        try:
            pid = parse(text).first("PID")
        except HL7ParseError:
            return []
        return patient_identifiers(pid, self.sender) if pid else []

    async def _stored(self, step: Step, identifiers: list[Identifier] | None = None) -> list[Any]:
        identifiers = identifiers if identifiers is not None else self.identifiers(step.patient)

        def read(store: Any) -> list[Any]:
            patient = store.find_patient(identifiers)
            if patient is None:
                return []
            return [a for a in store.anc_results(patient.rems_id) if a.received == step.at]

        return await self.service.writer.run(read)


def ack_fields(ack: str) -> dict[str, Any]:
    segments = [s.split("|") for s in ack.split("\r") if s]
    msa = next((s for s in segments if s[0] == "MSA"), ["MSA", ""])
    code = {"CA": "AA", "CE": "AE", "CR": "AR"}.get(msa[1], msa[1])
    warnings = [
        {"code": s[5].split("^")[0], "text": s[8] if len(s) > 8 else ""}
        for s in segments
        if s[0] == "ERR" and len(s) > 5 and s[5]
    ]
    return {"ack": code, "warnings": warnings, "http_status": None}
