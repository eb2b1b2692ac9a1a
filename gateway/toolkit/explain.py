"""`rems-gateway explain FILE`: what the gateway would make of an HL7 v2 message (or a batch
file of them), a FHIR resource or a Bundle — stored nowhere.

Every step is the gateway's own: the intake's checks before the store (`Hl7Admission.admit`),
the ORU and pharmacy mappings, the FHIR readings, `rems_core.anc` for the ANC and its category,
the registry's answer through `RemsReads` (never the writer), the dispense check as
`$rems-etasu` makes it, and the ACK / RRE / OperationOutcome builders. Nothing here decides.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway.app.context import UnitContext
from gateway.app.errors import UnknownPatient
from gateway.app.reads import RemsReads
from gateway.app.values import LabOutcome, OrdersDone
from gateway.fhir.http import FhirError
from gateway.fhir.resources import validated
from gateway.mllp.intake import (
    ORDER_TYPES,
    Admitted,
    Hl7Admission,
    Received,
    content_hash,
    lab_ack,
    order_reply,
    orders_answered,
    our_code,
)
from mappings.fhir.etasu import EtasuCheck, EtasuQuery
from mappings.fhir.medication_dispense import ENDS
from mappings.fhir.medication_request import decision_issues, read_medication_request
from mappings.fhir.observation import read_observation
from mappings.fhir.outcome import Issue, lab_issues, operation_outcome
from mappings.fhir.references import SubjectRef
from mappings.hl7v2.ack import wanted
from mappings.hl7v2.identity_text import ambiguous_text, unmatched_text
from mappings.hl7v2.oru import (
    Hl7Problem,
    ObxReading,
    observation_code,
    observation_unit,
    observation_value,
    obx_readings,
    to_lab_report,
)
from mappings.hl7v2.pharmacy import OrderRejected, PharmacyMessage, to_pharmacy_message
from mappings.hl7v2.senders import SenderConfig
from mappings.hl7v2.tokenizer import HL7ParseError, Message, parse, split_batch
from rems_core.anc import read_count, read_percent, relevant_codes, specimen_ancs
from rems_core.codes import Code, finding
from rems_core.identity import Candidate, mask, of_identifiers, reference, resolved
from rems_core.model import (
    AncResult,
    Decision,
    Designation,
    Finding,
    Identifier,
    LabResult,
    Patient,
    ResultStatus,
)
from rems_core.rulepack import OutOfScope, RulePack
from rems_core.store.repo import specimen_key

NOT_CONSULTED = "no registry was consulted (give --db): the patient is not matched"


class ExplainError(ValueError):
    """A file that is neither HL7 v2 nor FHIR JSON."""


@dataclass
class Explainer:
    """``reads``: the registry's answers (None: none consulted); ``at``: the clinical now of the
    explained messages (None: each one's own — MSH-7, meta.lastUpdated — else now)."""

    ctx: UnitContext
    admission: Hl7Admission
    reads: RemsReads | None = None
    at: datetime | None = None
    reveal: bool = False

    @property
    def pack(self) -> RulePack:
        return self.ctx.lab_pack()

    async def explain_file(self, path: Path) -> dict[str, Any]:
        data = path.read_bytes()
        text = data.lstrip(b"\xef\xbb\xbf").lstrip()
        if text.startswith(b"{"):
            try:
                resource = json.loads(text)
            except ValueError as exc:
                raise ExplainError(f"{path}: not JSON ({exc})") from None
            items = await self.fhir(resource)
        elif text[:3] in (b"MSH", b"FHS", b"BHS"):
            try:
                messages = split_batch(data.replace(b"\r\n", b"\r").replace(b"\n", b"\r"))
            except HL7ParseError as exc:
                raise ExplainError(f"{path}: {exc}") from None
            items = [await self.hl7(message) for message in messages]
        else:
            raise ExplainError(f"{path}: neither an HL7 v2 message (MSH, FHS, BHS) nor FHIR JSON")
        registry = "registry consulted (--db), read only" if self.reads else NOT_CONSULTED
        return {"file": str(path), "registry": registry, "items": items}

    # --- HL7 v2 ----------------------------------------------------------------------------

    async def hl7(self, data: bytes) -> dict[str, Any]:
        admitted = await self.admission.admit(data, self.at, connection=False)
        if isinstance(admitted, Received):
            return _refused(data, admitted)
        message, sender, msh = admitted.message, admitted.sender, admitted.message.msh
        item: dict[str, Any] = {
            "kind": "hl7",
            "message_type": f"{msh.get(9, 1)}^{msh.get(9, 2)}",
            "sender": sender.key,
            "control_id": msh.get(10, 1),
            "at": admitted.received.isoformat(),
            "warnings": [_problem(p) for p in admitted.warnings],
        }
        if msh.get(9, 1) == "ORU":
            await self._oru(item, data, admitted)
        elif msh.get(9, 1) in ORDER_TYPES:
            await self._orders(item, data, admitted)
        else:
            report = to_lab_report(message, sender, self.pack, self.ctx.tz)
            item["patient"] = await self._patient(report.candidates, sender.key)
            item["note"] = f"{item['message_type']}: its effects are not previewed"
        return item

    async def _oru(self, item: dict[str, Any], data: bytes, admitted: Admitted) -> None:
        message, sender = admitted.message, admitted.sender
        report = to_lab_report(message, sender, self.pack, self.ctx.tz)
        report = replace(report, problems=[*admitted.warnings, *report.problems])
        patient = await self._patient(report.candidates, sender.key)
        item["patient"] = patient
        designation = _designation(patient)
        readings = obx_readings(message, sender, self.pack, self.ctx.tz)
        item["observations"], ancs = _hl7_observations(readings, sender, self.pack, designation)
        item["ancs"] = [_anc(a) for a in ancs]
        outcome, disposition = _lab_outcome(patient, ancs, bool(report.results))
        code, ack = lab_ack(message, sender, report, outcome, disposition, admitted.received)
        answer: dict[str, Any] = {"disposition": disposition, "code": code, "text": ack}
        if patient["status"] == "not consulted" and disposition == "accepted":
            answer["note"] = "as the ACK would be if the patient matched (no registry consulted)"
        stored = await self._stored_answer(sender, message, data)
        if stored is not None:
            answer = stored if stored["disposition"] == "duplicate" else stored | {"text": ""}
            if stored["disposition"] == "conflict":
                code, ack = lab_ack(message, sender, report, None, "conflict", admitted.received)
                answer |= {"code": code, "text": ack}
        answer["sent"] = wanted(message.msh, answer["code"])
        item["answer"] = answer

    async def _stored_answer(
        self, sender: SenderConfig, message: Message, data: bytes
    ) -> dict[str, Any] | None:
        """With --db: a message stored already under this control id (a resend, or a conflict)."""
        if self.reads is None:
            return None
        earlier = await self.reads.message_answer(sender.key, message.msh.get(10, 1))
        if earlier is None:
            return None
        if earlier[0] == content_hash(data):
            note = "the same message is stored already: its stored ACK is sent again, unprocessed"
            code = our_code(message.msh, sender, earlier[1])
            return {"disposition": "duplicate", "code": code, "text": earlier[1], "note": note}
        note = "this control id was used for another message: AE 205, held for review"
        return {"disposition": "conflict", "code": "AE", "note": note}

    async def _orders(self, item: dict[str, Any], data: bytes, admitted: Admitted) -> None:
        message, sender, received = admitted.message, admitted.sender, admitted.received
        try:
            orders = to_pharmacy_message(message, sender, received, self.ctx.tz)
        except OrderRejected as rejected:
            refused = self.admission.refused(message, sender, "AE", [rejected.problem], received)
            item["answer"] = _answer_of(refused)
            return
        item["patient"] = await self._patient(orders.candidates, sender.key)
        identifiers = resolved(orders.candidates)
        decided: list[Decision | Finding] = []
        entries = []
        for order in orders.orders:
            entry = _request_fields(order.request) | {
                "location": f"ORC^{order.sequence}",
                "placer": order.placer,
                "warnings": [_problem(p) for p in order.problems],
            }
            if self.reads is not None:
                checked = await self._check(identifiers, order.request)
                decided.append(checked if isinstance(checked, Finding) else checked.decision)
                entry["decision"] = _decision(checked)
            entries.append(entry)
        item["orders"] = entries
        if orders.ends:
            item["note"] = f"{len(orders.ends)} order end(s) (ORC-1 CA/DC): not previewed"
        if self.reads is None:
            item["answer"] = {"note": f"not previewed: {NOT_CONSULTED}"}
            return
        answered = orders_answered(
            PharmacyMessage(orders.candidates, orders.orders, []),
            OrdersDone(decided, []),
            "accepted",
            admitted.warnings,
        )
        text = order_reply(message, sender, data, received, answered)
        note = "a check issues no RDA: the gateway numbers one when it decides the order"
        item["answer"] = {"disposition": "accepted", "code": answered[0], "text": text}
        item["answer"] |= {"sent": True, "note": note}

    async def _check(self, identifiers: list[Identifier], request: Any) -> EtasuCheck | Finding:
        assert self.reads is not None
        try:
            return await self.reads.check_order(identifiers, request)
        except OutOfScope as exc:
            return Finding(OutOfScope.code, str(exc))

    # --- FHIR --------------------------------------------------------------------------------

    async def fhir(self, resource: Any) -> list[dict[str, Any]]:
        if not isinstance(resource, dict):
            raise ExplainError("a FHIR resource is a JSON object")
        if resource.get("resourceType") != "Bundle":
            return [await self._resource(resource)]
        entries = [e.get("resource") for e in resource.get("entry") or [] if isinstance(e, dict)]
        items = [await self._resource(r) for r in entries if isinstance(r, dict)]
        labs = [o for item in items for o in item.get("observations", []) if o.get("result")]
        bundle = {"kind": "fhir", "resource_type": "Bundle", "type": resource.get("type")}
        if labs:  # a Bundle's results of one specimen derive its ANC together
            patient = next((i["patient"] for i in items if "patient" in i), None)
            results = [_lab_result(o["result"]) for o in labs]
            ancs = _specimens_ancs(self.pack, _designation(patient), results)
            bundle["ancs"] = [_anc(a) for a in ancs]
        return [bundle, *items]

    async def _resource(self, data: dict[str, Any]) -> dict[str, Any]:
        kind = data.get("resourceType")
        item: dict[str, Any] = {"kind": "fhir", "resource_type": kind, "id": data.get("id")}
        if kind not in ("Observation", "MedicationRequest"):
            item["note"] = f"{kind}: only Observations and MedicationRequests are explained"
            return item
        try:
            model = validated(data, str(kind))
        except FhirError as error:
            item["answer"] = _fhir_answer(error.status, error.issues)
            return item
        if kind == "Observation":
            await self._observation(item, model)
        else:
            await self._medication_request(item, model, data)
        return item

    async def _observation(self, item: dict[str, Any], model: Any) -> None:
        reading = read_observation(model, self.pack, self.ctx.tz)
        errors = [p for p in reading.problems if p.severity == "error"]
        if errors:
            item["answer"] = _fhir_answer(422, errors)
            return
        patient = await self._patient(_subject_candidates(reading.subject), "a FHIR client")
        item["patient"] = patient
        result = reading.result
        entry: dict[str, Any] = {"code": reading.code, "warnings": _findings(reading.warnings)}
        ancs: list[AncResult] = []
        if result is None:
            entry["ignored"] = _fhir_ignored(reading.code, reading.warnings, self.pack)
        else:
            entry |= _result_fields(result) | _normalised(self.pack, result)
            entry["result"] = _result_dict(result)
            ancs = specimen_ancs(self.pack, _designation(patient), [result])
            entry |= next((_anc_fields(a) for a in ancs if not a.derived), {})
        item["observations"] = [entry]
        item["ancs"] = [_anc(a) for a in ancs]
        outcome, _ = _lab_outcome(patient, ancs, result is not None)
        issues = lab_issues((), reading.warnings)
        if outcome is not None:
            issues += lab_issues(outcome.results, outcome.warnings)
        item["answer"] = _fhir_answer(201, issues)

    async def _medication_request(self, item: dict[str, Any], model: Any, data: Any) -> None:
        if str(model.status) in ENDS:
            item["note"] = f"status {model.status}: the end of an order, not previewed"
            return
        now = self.at or _last_updated(data) or datetime.now(UTC)
        found = read_medication_request(model, now)
        if found.request is None or found.subject is None:
            item["answer"] = _fhir_answer(422, found.problems)
            return
        item["patient"] = await self._patient(_subject_candidates(found.subject), "a FHIR client")
        item["orders"] = [_request_fields(found.request) | {"request_id": found.identifier}]
        if self.reads is None:
            item["answer"] = {"note": f"not previewed: {NOT_CONSULTED}"}
            return
        try:
            checked = await self.reads.check_etasu(EtasuQuery(None, found.subject, found.request))
        except UnknownPatient:
            text = "subject names a Patient the gateway does not know"
            problem = Issue("error", "not-found", text, ("MedicationRequest.subject",))
            item["answer"] = _fhir_answer(422, [problem])
            return
        except OutOfScope as exc:
            item["orders"][0]["decision"] = _decision(Finding(OutOfScope.code, str(exc)))
            return
        item["orders"][0]["decision"] = _decision(checked)
        assert checked.decision is not None
        item["answer"] = _fhir_answer(201, decision_issues(checked.decision))
        item["answer"]["note"] = "a check issues no RDA: the gateway numbers one when it decides"

    # --- the patient ---------------------------------------------------------------------------

    async def _patient(self, candidates: list[Candidate], sender: str) -> dict[str, Any]:
        shown = [
            {
                "field": c.field,
                "system": c.system,
                "value": c.value if self.reveal else mask(c.value),
                "rule": c.rule.value,
            }
            for c in candidates
        ]
        found: dict[str, Any] = {"candidates": shown}
        if self.reads is None:
            if not resolved(candidates):
                return found | {"status": "unmatched", "why": unmatched_text(candidates, sender)}
            return found | {"status": "not consulted", "why": NOT_CONSULTED}
        patients = await self.reads.match_patients(candidates)
        if len(patients) == 1:
            return found | _matched(patients[0])
        if patients:
            why = ambiguous_text(candidates, len(patients))
            return (
                found
                | {"status": "ambiguous", "patients": [p.rems_id for p in patients]}
                | {"why": why}
            )
        return found | {"status": "unmatched", "why": unmatched_text(candidates, sender)}


# --- pieces ------------------------------------------------------------------------------------


def _matched(patient: Patient) -> dict[str, Any]:
    return {
        "status": "matched",
        "patient": patient.rems_id,
        "designation": patient.designation.value,
        "why": "one registry patient has one of these identifiers",
    }


def _designation(patient: dict[str, Any] | None) -> Designation:
    """The matched patient's (categories differ for BEN), else the general population's."""
    if patient and patient.get("designation"):
        return Designation(patient["designation"])
    return Designation.GENERAL


def _lab_outcome(
    patient: dict[str, Any], ancs: list[AncResult], any_results: bool
) -> tuple[LabOutcome | None, str]:
    """The outcome a message's unit of work would have (unmatched: held for review)."""
    if not any_results:
        return None, "no_results"
    status = patient["status"]
    if status in ("unmatched", "ambiguous"):
        code = Code.PATIENT_AMBIGUOUS if status == "ambiguous" else Code.PATIENT_NOT_MATCHED
        return LabOutcome(None, (), (finding(code),)), "unmatched"
    return LabOutcome(patient.get("patient") or "?", tuple(ancs)), "accepted"


def _hl7_observations(
    readings: list[ObxReading], sender: SenderConfig, pack: RulePack, designation: Designation
) -> tuple[list[dict[str, Any]], list[AncResult]]:
    """Each OBX as read, with what it yields; and the ANCs of the message's specimens."""
    entries: dict[int, dict[str, Any]] = {}
    for read in readings:
        obx = read.segment
        unit, _ = observation_unit(obx, read.sequence, pack)
        entry: dict[str, Any] = {
            "location": f"OBX^{read.sequence}",
            "code": obx.get(3, 1),
            "text": obx.get(3, 2),
            "loinc": observation_code(obx, sender),
            "value": observation_value(obx),
            "unit": unit,
            "warnings": [_problem(p) for p in read.problems],
        }
        if read.result is None:
            entry["ignored"] = _hl7_ignored(read, entry["loinc"], pack)
        else:
            entry |= _result_fields(read.result) | _normalised(pack, read.result)
        entries[read.sequence] = entry
    results = [(r.sequence, r.result) for r in readings if r.result is not None]
    ancs = _specimens_ancs(pack, designation, [result for _, result in results])
    for sequence, result in results:  # a direct ANC's own count and category
        for anc in ancs:
            if not anc.derived and anc.code == result.code and anc.drawn == result.drawn:
                entries[sequence] |= _anc_fields(anc)
    return list(entries.values()), ancs


def _specimens_ancs(
    pack: RulePack, designation: Designation, results: Iterable[LabResult]
) -> list[AncResult]:
    by_specimen: dict[str, list[LabResult]] = {}
    for result in results:
        by_specimen.setdefault(specimen_key(result), []).append(result)
    return [a for found in by_specimen.values() for a in specimen_ancs(pack, designation, found)]


def _hl7_ignored(read: ObxReading, loinc: str | None, pack: RulePack) -> str:
    if read.problems:
        return "not used: " + "; ".join(f"{p.code}: {p.text}" for p in read.problems)
    if loinc is None:
        return "not an ANC or a derivation input (OBX-3 is no LOINC code nor in local_codes)"
    if loinc not in relevant_codes(pack):
        return f"LOINC {loinc} is not an ANC or a derivation input"
    return f"OBX-11 {read.segment.get(11, 1)!r} gives no result"


def _fhir_ignored(code: str | None, warnings: list[Finding], pack: RulePack) -> str:
    if warnings:
        return "stored, not used: " + "; ".join(f"{w.code}: {w.text}" for w in warnings)
    if code is None:
        return "no LOINC coding: stored, not read"
    if code not in relevant_codes(pack):
        return f"LOINC {code} is not an ANC or a derivation input: stored, not read"
    return "its status gives no result yet"


def _role(pack: RulePack, code: str) -> str:
    roles = pack.loinc.value.model_dump()
    return next((role for role, codes in roles.items() if code in codes), "")


def _normalised(pack: RulePack, result: LabResult) -> dict[str, Any]:
    """A derivation input's reading: a WBC per µL, a percentage (an ANC: ``_anc_fields``)."""
    role = _role(pack, result.code)
    if role == "wbc":
        reading = read_count(pack, result)
        return {"role": role, "per_ul": _number(reading.value)}
    if role.endswith("_pct"):
        return {"role": role, "percent": _number(read_percent(pack, result).value)}
    return {"role": role}


def _number(value: Decimal | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if value == value.to_integral() else float(value)


def _result_fields(result: LabResult) -> dict[str, Any]:
    return {
        "drawn": result.drawn.isoformat(),
        "status": result.status.value,
        "specimen": result.specimen,
        "value": result.value,
        "unit": result.unit,
    }


def _result_dict(result: LabResult) -> dict[str, Any]:
    return {"code": result.code} | _result_fields(result)


def _lab_result(data: dict[str, Any]) -> LabResult:
    return LabResult(
        data["code"],
        data["value"],
        data["unit"],
        datetime.fromisoformat(data["drawn"]),
        ResultStatus(data["status"]),
        data["specimen"],
    )


def _anc_fields(anc: AncResult) -> dict[str, Any]:
    return {
        "anc_per_ul": anc.anc,
        "category": anc.category.value if anc.category else None,
        "usable": anc.usable,
        "findings": _findings(anc.warnings),
        "advice": anc.advice,
    }


def _anc(anc: AncResult) -> dict[str, Any]:
    shown = {"code": anc.code, "derived": anc.derived, "specimen": anc.specimen}
    return shown | {"drawn": anc.drawn.isoformat()} | _anc_fields(anc)


def _findings(found: Iterable[Finding]) -> list[dict[str, str]]:
    return [f.as_dict() for f in found]


def _problem(problem: Hl7Problem) -> dict[str, str]:
    """An ERR as data: location, HL7 table 0357 code, severity, our code, text."""
    return asdict(problem)


def _request_fields(request: Any) -> dict[str, Any]:
    return {
        "drug": request.drug,
        "pharmacy": request.pharmacy_npi,
        "prescriber": request.prescriber_npi or "(the enrolling prescriber)",
        "setting": request.setting.value,
        "days_supply": request.days_supply,
        "discharge": request.discharge,
        "override": request.override is not None,
    }


def _decision(checked: EtasuCheck | Finding) -> dict[str, Any]:
    if isinstance(checked, Finding):
        return {"outcome": None, "reasons": [checked.as_dict()]}
    assert checked.decision is not None
    shown = checked.decision.as_dict()
    if checked.stored:
        shown["note"] = "decided before (the same request id and order): the stored decision"
    return shown


def _subject_candidates(subject: SubjectRef | None) -> list[Candidate]:
    if subject is None:
        return []
    found = of_identifiers(list(subject.identifiers))
    return [*found, reference(subject.patient_id)] if subject.patient_id else found


def _fhir_answer(status: int, issues: Iterable[Issue]) -> dict[str, Any]:
    return {"status": status, "operation_outcome": operation_outcome(issues)}


def _last_updated(data: dict[str, Any]) -> datetime | None:
    text = (data.get("meta") or {}).get("lastUpdated")
    try:
        moment = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return moment if moment is not None and moment.tzinfo is not None else None


def _answer_of(received: Received) -> dict[str, Any]:
    return {
        "disposition": received.disposition,
        "code": received.code,
        "text": received.ack or "",
        "sent": received.ack is not None,
    }


def _refused(data: bytes, received: Received) -> dict[str, Any]:
    """A message the intake refuses before the store: what it would answer."""
    item: dict[str, Any] = {"kind": "hl7", "refused": True, "answer": _answer_of(received)}
    try:
        msh = parse(data).msh
    except HL7ParseError:
        return item
    item |= {"message_type": f"{msh.get(9, 1)}^{msh.get(9, 2)}", "control_id": msh.get(10, 1)}
    return item | {"sender": f"{msh.get(3, 1)}|{msh.get(4, 1)}"}
