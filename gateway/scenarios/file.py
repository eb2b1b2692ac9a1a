"""Scenario files (docs/contracts.md §2): reading them strictly, and their steps as domain requests.

Every step is parsed when the file is loaded, so a typo is reported before anything runs, with
the step and the key it concerns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, tzinfo
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import ValidationError

from gateway.scenarios.hooks import HookStep, HookStepError, hook_step
from mappings.hl7v2.senders import SenderConfig
from rems_core.model import (
    Designation,
    DispenseRequest,
    Identifier,
    LabResult,
    MonitoringFrequency,
    Override,
    PatientStatusForm,
    PsfType,
    Rationale,
    ReportedAnc,
    ResultStatus,
    Setting,
    SubmitterRole,
    TreatmentStatus,
)
from rems_core.rda import DispenseRecord, OrderAction, OrderEnd
from rems_core.registry import RegistryDocument, RegistryInvalid, registry_from, yaml_problem
from rems_core.rulepack import DEFAULT_PACK
from rems_core.shipping import ShipmentQuery
from rems_core.worklist import TaskKind

E = TypeVar("E", bound=StrEnum)

DEFAULT_DRUG = "197536"  # clozapine 100 MG Oral Tablet (an SCD of ingredient 2626)
TOP_LEVEL = {"name", "rules", "timezone", "registry", "steps", "description", "sender"}
SENDER_KEYS = {
    "application", "facility", "assigning_authorities", "default_authority",
    "namespace_as_system", "local_codes", "draw_time_field",
}  # fmt: skip
DEFAULT_SENDER = ("SCENARIO", "RUNNER")  # MSH-3, MSH-4 of the runner's messages
STEP_COMMON = {"at", "expect", "patient", "note", "description"}
LAB_KEYS = {"patient", "pid", "code", "value", "unit", "drawn", "status", "specimen"}
ADT_EVENT = re.compile(r"^A\d\d$")
STEP_KEYS: dict[str, set[str]] = {
    "lab": LAB_KEYS,
    "labs": LAB_KEYS,
    "dispense": {
        "patient", "pharmacy", "prescriber", "setting", "discharge", "days_supply", "drug",
        "request_id", "override",
    },
    "psf": {
        "patient", "type", "by", "role", "prescriber", "designation", "treatment_status",
        "status_effective", "monitoring_frequency", "anc", "missed_draws", "justification",
        "rationale", "signed", "complete_draft", "authored",
    },
    "sign": {"patient", "by", "psf"},
    "advance_to": {"to", "until", "patient"},
    "adt": {"event", "pid", "mrg"},
    "review": {"link", "to", "identifier", "discard", "reason"},
    "cancel": {"patient", "request_id", "action"},
    "dispensed": {"patient", "request_id", "drug", "quantity", "days_supply"},
    "hook": {"request", "patient", "feedback"},
    "ship_check": {"wholesaler", "pharmacy", "on"},
    "hl7": set(),
    "fhir": set(),
}  # fmt: skip
COMMON_EXPECT = {"warnings", "ack", "http_status"}
HOOK_EXPECT = {"cards", "indicator", "summary", "detail", "override_reasons", "feedback_status"}
WORKLIST_EXPECT = {"tasks", "draft"}  # the patient's open tasks and monthly draft after the step
PATIENT_EXPECT = COMMON_EXPECT | WORKLIST_EXPECT
EXPECT_KEYS: dict[str, set[str]] = {
    "lab": PATIENT_EXPECT | {"anc", "category", "derived", "usable", "held"},
    "dispense": PATIENT_EXPECT
    | {"outcome", "reasons", "max_days_supply", "override_possible", "rule_pack", "rda"},
    "psf": PATIENT_EXPECT | {"accepted", "status", "reasons", "rule_pack"},
    "advance_to": {"warnings", "held"} | WORKLIST_EXPECT,
    "adt": {"ack", "warnings", "held"},
    "review": {"filed", "held"},
    "cancel": PATIENT_EXPECT | {"known", "voided", "reasons"},
    "dispensed": PATIENT_EXPECT | {"outcome", "reasons"},
}
EXPECT_KEYS["hook"] = PATIENT_EXPECT | HOOK_EXPECT
EXPECT_KEYS["ship_check"] = COMMON_EXPECT | {"outcome", "reasons", "rule_pack"}
EXPECT_KEYS["labs"] = EXPECT_KEYS["lab"]
EXPECT_KEYS["sign"] = EXPECT_KEYS["psf"]
EXPECT_KEYS["hl7"] = EXPECT_KEYS["fhir"] = set().union(*EXPECT_KEYS.values()) - {"filed"}

TASK_KINDS = [kind.value for kind in TaskKind]
DRAFT_KEYS = {
    "due", "ancs", "rationale_needed", "recommended_frequency", "missed_draws", "versions",
    "rationale",
}  # fmt: skip
NO_DRAFT = "none"

RESULT_STATUS = {
    "final": ResultStatus.FINAL,
    "f": ResultStatus.FINAL,
    "corrected": ResultStatus.CORRECTED,
    "amended": ResultStatus.CORRECTED,
    "c": ResultStatus.CORRECTED,
    "preliminary": ResultStatus.PRELIMINARY,
    "p": ResultStatus.PRELIMINARY,
    "cancelled": ResultStatus.CANCELLED,
    "entered-in-error": ResultStatus.CANCELLED,
    "x": ResultStatus.CANCELLED,
    "d": ResultStatus.CANCELLED,
}


class ScenarioError(ValueError):
    """A scenario file that cannot be run as written."""


class _Loader(yaml.SafeLoader):
    """YAML 1.2 in spirit: only true/false are booleans (``on``, ``no`` stay text), and numbers
    with a fraction stay exact decimals (0.8 is 0.8, not a binary float)."""


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_constructor(
    "tag:yaml.org,2002:float",
    lambda loader, node: Decimal(loader.construct_scalar(node).replace("_", "")),
)


def aware(value: Any, tz: tzinfo, where: str = "time") -> datetime:
    """ISO text, a YAML timestamp or a date (its midnight); local to the file's zone if naive."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ScenarioError(f"{where}: {value!r} is not an ISO 8601 time") from None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time(0))
    if not isinstance(value, datetime):
        raise ScenarioError(f"{where}: {value!r} is not an ISO 8601 time")
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(UTC)


class Fields:
    """One mapping of a scenario file, read strictly: unknown keys and bad values are errors
    that name the place (``step 4 dispense.days_supply``)."""

    def __init__(self, data: Any, where: str, allowed: set[str], tz: tzinfo) -> None:
        if not isinstance(data, dict):
            raise ScenarioError(f"{where}: expected a mapping, got {data!r}")
        unknown = sorted(map(str, set(data) - allowed))
        if unknown:
            raise ScenarioError(
                f"{where}: unknown keys {unknown} (known: {', '.join(sorted(allowed))})"
            )
        self.data, self.where, self.tz = data, where, tz

    def _missing(self, key: str) -> ScenarioError:
        return ScenarioError(f"{self.where}: `{key}` is required")

    def text(self, key: str, default: str | None = None, required: bool = False) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self._missing(key)
            return default
        return str(value)

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key, default)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ScenarioError(
                f"{self.where}.{key}: {value!r} is not true or false (scenario files are YAML 1.2 "
                "in spirit: yes/no/on/off are text)"
            )
        return value

    def integer(self, key: str, default: int) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ScenarioError(f"{self.where}.{key}: {value!r} is not a whole number")
        try:
            return int(value)
        except ValueError:
            raise ScenarioError(f"{self.where}.{key}: {value!r} is not a whole number") from None

    def choice(self, key: str, kind: type[E], default: E | None = None) -> E | None:
        value = self.data.get(key)
        if value is None:
            return default
        try:
            return kind(str(value))
        except ValueError:
            known = ", ".join(m.value for m in kind)
            raise ScenarioError(f"{self.where}.{key}: {value!r} is not one of {known}") from None

    def moment(self, key: str) -> datetime:
        if self.data.get(key) is None:
            raise self._missing(key)
        return aware(self.data[key], self.tz, f"{self.where}.{key}")

    def day(self, value: Any, key: str) -> date:
        if isinstance(value, datetime):
            return value.date()
        if isinstance(value, date):
            return value
        try:
            return date.fromisoformat(str(value))
        except ValueError:
            raise ScenarioError(f"{self.where}.{key}: {value!r} is not a date") from None


@dataclass
class Step:
    index: int
    at: datetime
    kind: str
    body: Any
    expect: dict[str, Any]
    raw: dict[str, Any]
    request: Any = None  # the parsed domain request (LabResult list, DispenseRequest, …)

    @property
    def label(self) -> str:
        return f"step {self.index} ({self.kind} at {self.at.isoformat()})"

    @property
    def patient(self) -> str | None:
        body = self.body if isinstance(self.body, dict) else {}
        if self.kind == "labs" and isinstance(self.body, list) and self.body:
            body = self.body[0]
        handle = body.get("patient", self.raw.get("patient"))
        return None if handle is None else str(handle)

    @property
    def completes_draft(self) -> bool:
        """A psf step with `complete_draft: true`: it completes the patient's open draft."""
        return self.kind == "psf" and str(self.body.get("complete_draft")).lower() == "true"

    @property
    def pid(self) -> str | None:
        """PID-3 as the sender writes it (a lab step's `pid`), instead of a patient handle."""
        body = self.body if isinstance(self.body, dict) else {}
        if self.kind == "labs" and isinstance(self.body, list) and self.body:
            body = self.body[0]
        value = body.get("pid") if self.kind in ("lab", "labs") else None
        return None if value is None else str(value)


@dataclass(frozen=True)
class AdtStep:
    event: str  # A01, A40, …
    pid: str  # PID-3 as a sender writes it
    mrg: str | None = None  # MRG-1 (merges)


@dataclass(frozen=True)
class ReviewStep:
    action: str  # link | discard
    target: str  # a patient handle or PID-3 text: the items whose candidates carry its values
    to: str | None = None  # link: the registry patient's handle
    identifier: Identifier | None = None  # link: the one identifier to attach
    reason: str = ""  # discard


@dataclass
class Scenario:
    path: Path
    name: str
    rules: str
    tz: tzinfo
    registry: RegistryDocument
    steps: list[Step] = field(default_factory=list)
    handles: dict[str, list[Identifier]] = field(default_factory=dict)
    sender: SenderConfig = field(
        default_factory=lambda: SenderConfig(
            application=DEFAULT_SENDER[0], facility=DEFAULT_SENDER[1]
        )
    )
    has_sender: bool = False  # the file names its `sender`


def read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ScenarioError(yaml_problem(exc)) from None
    if not isinstance(data, dict):
        raise ScenarioError("a scenario file is a mapping with name, registry and steps")
    return data


def load(path: Path) -> Scenario:
    data = read(path)
    Fields(data, "file", TOP_LEVEL, UTC)
    try:
        tz = ZoneInfo(str(data.get("timezone") or "UTC"))
    except (ZoneInfoNotFoundError, ValueError):
        raise ScenarioError(f"timezone: {data['timezone']!r} is not an IANA time zone") from None
    try:
        registry = registry_from(_stringify(data.get("registry") or {}))
    except RegistryInvalid as exc:
        raise ScenarioError(f"registry: {exc}") from None
    if not data.get("steps"):
        raise ScenarioError("the file has no steps")
    scenario = Scenario(
        path=path,
        name=str(data.get("name") or path.stem),
        rules=str(data.get("rules") or DEFAULT_PACK),
        tz=tz,
        registry=registry,
    )
    if data.get("sender") is not None:
        scenario.sender = sender_config(data["sender"])
        scenario.has_sender = True
    for patient in registry.patients:
        handle = patient.id or patient.identifiers[0].value
        scenario.handles[handle] = [Identifier(i.system, i.value) for i in patient.identifiers]
    for index, raw in enumerate(data["steps"], start=1):
        step = _step(index, raw, tz)
        if step.kind == "hook":
            try:
                step.request.read_file(path, f"step {index} hook")
            except HookStepError as exc:
                raise ScenarioError(str(exc)) from None
        if scenario.steps and step.at < scenario.steps[-1].at:
            raise ScenarioError(
                f"{step.label}: steps run in time order, and this one is before step "
                f"{index - 1} ({scenario.steps[-1].at.isoformat()})"
            )
        scenario.steps.append(step)
    return scenario


def sender_config(data: Any) -> SenderConfig:
    Fields(data, "sender", SENDER_KEYS, UTC)
    values = {"application": DEFAULT_SENDER[0], "facility": DEFAULT_SENDER[1], **data}
    try:
        return SenderConfig.model_validate(_stringify(values))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ScenarioError(f"sender: {problems}") from None


def pid_values(text: str) -> list[str]:
    """CX-1 of each repetition of a PID-3 (or MRG-1) text, as written."""
    values = [rep.split("^")[0].strip() for rep in text.split("~")]
    return [v for v in values if v]


def _stringify(value: Any) -> Any:
    """Decimals from the loader become text where the registry schema expects it."""
    if isinstance(value, dict):
        return {k: _stringify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stringify(v) for v in value]
    return str(value) if isinstance(value, Decimal) else value


def _step(index: int, raw: Any, tz: tzinfo) -> Step:
    where = f"step {index}"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: a step is a mapping")
    kinds = [k for k in STEP_KEYS if k in raw]
    Fields(raw, where, STEP_COMMON | set(STEP_KEYS), tz)
    if len(kinds) != 1:
        raise ScenarioError(
            f"{where}: needs exactly one step kind of {', '.join(STEP_KEYS)} (has {kinds})"
        )
    kind = kinds[0]
    if "at" not in raw:
        raise ScenarioError(f"{where}: every step needs `at`")
    at = aware(raw["at"], tz, f"{where}.at")
    expect = raw.get("expect") or {}
    Fields(expect, f"{where} expect (of a {kind} step)", EXPECT_KEYS[kind], tz)
    if kind in ("lab", "labs", "adt") and raw.get("patient") is not None and _has_pid(raw[kind]):
        raise ScenarioError(
            f"{where} {kind}.pid: `pid` names the patient instead of `patient`, not with it"
        )
    step = Step(index, at, kind, raw[kind], expect, raw)
    step.request = PARSERS[kind](raw[kind], f"{where} {kind}", at, tz)
    step.expect = worklist_expect(step, f"{where} expect", tz)
    return step


def worklist_expect(step: Step, where: str, tz: tzinfo) -> dict[str, Any]:
    """The step's `expect` with `tasks` and `draft` read strictly: they are the patient's."""
    expect = dict(step.expect)
    named = sorted(WORKLIST_EXPECT & set(expect))
    if named and step.patient is None:
        raise ScenarioError(f"{where}: {named} are a patient's: the step names no `patient`")
    if "tasks" in expect:
        expect["tasks"] = task_kinds(expect["tasks"], f"{where}.tasks")
    if "draft" in expect:
        expect["draft"] = draft_expect(expect["draft"], f"{where}.draft", tz)
    return expect


def task_kinds(value: Any, where: str) -> list[str]:
    """`tasks: [psf-due, anc-overdue]`: kinds of the open tasks (`[]`: none)."""
    if not isinstance(value, list):
        raise ScenarioError(f"{where}: expected a list of task kinds, got {value!r}")
    unknown = sorted({str(kind) for kind in value} - set(TASK_KINDS))
    if unknown:
        raise ScenarioError(f"{where}: {unknown} are not task kinds ({', '.join(TASK_KINDS)})")
    return sorted({str(kind) for kind in value})


def draft_expect(value: Any, where: str, tz: tzinfo) -> str | dict[str, Any]:
    """`draft: none`, or what the open draft pre-fills: only the keys named are compared."""
    if value == NO_DRAFT:
        return NO_DRAFT
    fields = Fields(value, where, DRAFT_KEYS, tz)
    wanted: dict[str, Any] = {}
    if "due" in value:
        wanted["due"] = fields.day(value["due"], "due").isoformat()
    for key in ("ancs", "missed_draws", "versions"):
        if key in value:
            wanted[key] = fields.integer(key, 0)
    if "rationale_needed" in value:
        wanted["rationale_needed"] = fields.flag("rationale_needed")
    if "recommended_frequency" in value:
        wanted["recommended_frequency"] = str(
            fields.choice("recommended_frequency", MonitoringFrequency)
        )
    return wanted


def _has_pid(body: Any) -> bool:
    first = body[0] if isinstance(body, list) and body else body
    return isinstance(first, dict) and first.get("pid") is not None


def lab_results(items: Any, where: str, at: datetime, tz: tzinfo) -> list[LabResult]:
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not items:
        raise ScenarioError(f"{where}: expected one lab result or a list of them")
    results = []
    for n, item in enumerate(items, start=1):
        fields = Fields(item, f"{where}[{n}]" if len(items) > 1 else where, LAB_KEYS, tz)
        if item.get("pid") is not None and (n > 1 or item.get("patient") is not None):
            raise ScenarioError(
                f"{fields.where}.pid: `pid` names the patient instead of `patient`, once, in "
                "the first result"
            )
        if item.get("pid") is not None and not pid_values(str(item["pid"])):
            raise ScenarioError(f"{fields.where}.pid: {item['pid']!r} has no CX-1 value")
        status = (fields.text("status") or "final").lower()
        if status not in RESULT_STATUS:
            known = ", ".join(RESULT_STATUS)
            raise ScenarioError(f"{fields.where}.status: {status!r} is not one of {known}")
        results.append(
            LabResult(
                code=fields.text("code", required=True) or "",
                value=fields.text("value", "") or "",
                unit=fields.text("unit", "") or "",
                drawn=fields.moment("drawn"),
                status=RESULT_STATUS[status],
                specimen=fields.text("specimen"),
            )
        )
    return results


def reported_ancs(items: Any, where: str, tz: tzinfo) -> tuple[ReportedAnc, ...]:
    if items is None:
        return ()
    if isinstance(items, dict):
        items = [items]
    ancs = []
    for item in items:
        fields = Fields(item, where, {"value", "unit", "drawn", "code"}, tz)
        ancs.append(
            ReportedAnc(
                value=fields.text("value", required=True) or "",
                unit=fields.text("unit", "/uL") or "/uL",
                drawn=fields.moment("drawn"),
                code=fields.text("code", "751-8") or "751-8",
            )
        )
    return tuple(ancs)


def dispense_request(body: Any, where: str, at: datetime, tz: tzinfo) -> DispenseRequest:
    fields = Fields(body, where, STEP_KEYS["dispense"], tz)
    override = None
    if body.get("override") is not None:
        o = Fields(
            body["override"], f"{where}.override", {"prescriber_npi", "anc", "rationale"}, tz
        )
        anc = reported_ancs(body["override"].get("anc"), f"{where}.override.anc", tz)
        override = Override(
            prescriber_npi=o.text("prescriber_npi"),
            anc=anc[0] if anc else None,
            rationale=o.text("rationale"),
        )
    return DispenseRequest(
        pharmacy_npi=fields.text("pharmacy", "") or "",
        prescriber_npi=fields.text("prescriber", "") or "",
        setting=fields.choice("setting", Setting, Setting.OUTPATIENT) or Setting.OUTPATIENT,
        dispense_date=at,
        days_supply=fields.integer("days_supply", 7),
        drug=fields.text("drug", DEFAULT_DRUG) or DEFAULT_DRUG,
        discharge=fields.flag("discharge"),
        request_id=fields.text("request_id"),
        override=override,
    )


def order_end(body: Any, where: str, at: datetime, tz: tzinfo) -> OrderEnd:
    """A `cancel` step: the order its request id names ends (ORC-1 CA/DC, a MedicationRequest
    `cancelled`/`stopped`)."""
    fields = Fields(body, where, STEP_KEYS["cancel"], tz)
    action = fields.choice("action", OrderAction, OrderAction.CANCEL) or OrderAction.CANCEL
    return OrderEnd(fields.text("request_id", required=True) or "", action, at)


def dispense_record(body: Any, where: str, at: datetime, tz: tzinfo) -> DispenseRecord:
    """A `dispensed` step: the drug dispensed against the RDA of the order its request id names
    (RDS^O13, a MedicationDispense)."""
    fields = Fields(body, where, STEP_KEYS["dispensed"], tz)
    days = fields.integer("days_supply", 7)
    return DispenseRecord(
        rda=None,
        request_id=fields.text("request_id", required=True),
        drug=fields.text("drug", DEFAULT_DRUG) or DEFAULT_DRUG,
        quantity=Decimal(fields.integer("quantity", days)),
        days_supply=days,
        dispensed_at=at,
    )


def psf_form(body: Any, where: str, at: datetime, tz: tzinfo) -> PatientStatusForm:
    fields = Fields(body, where, STEP_KEYS["psf"], tz)
    by = fields.text("by", required=True) or ""
    role = fields.choice("role", SubmitterRole, SubmitterRole.PRESCRIBER)
    signed = fields.flag("signed")
    form_type = fields.choice("type", PsfType, PsfType.MONTHLY) or PsfType.MONTHLY
    if fields.flag("complete_draft") and form_type != PsfType.MONTHLY:
        raise ScenarioError(f"{where}.complete_draft: the open draft is a monthly PSF")
    rationale = None
    if body.get("rationale") is not None:
        r = Fields(body["rationale"], f"{where}.rationale", {"reason", "text"}, tz)
        rationale = Rationale(r.text("reason", required=True) or "", r.text("text", "") or "")
    effective = body.get("status_effective")
    authored = fields.moment("authored") if body.get("authored") is not None else at
    if authored > at:
        raise ScenarioError(f"{where}.authored: a form is authored before it is submitted")
    return PatientStatusForm(
        type=form_type,
        submitted_at=authored,
        submitter=by,
        role=role or SubmitterRole.PRESCRIBER,
        prescriber_npi=fields.text("prescriber", by) or by,
        designation=fields.choice("designation", Designation),
        treatment_status=fields.choice("treatment_status", TreatmentStatus, TreatmentStatus.ACTIVE)
        or TreatmentStatus.ACTIVE,
        status_effective=fields.day(effective, "status_effective") if effective else None,
        monitoring_frequency=fields.choice("monitoring_frequency", MonitoringFrequency),
        anc=reported_ancs(body.get("anc"), f"{where}.anc", tz),
        missed_draws=tuple(fields.day(d, "missed_draws") for d in body.get("missed_draws") or ()),
        justification=fields.text("justification", "") or "",
        rationale=rationale,
        signed=signed,
        signed_by=by if signed and role == SubmitterRole.PRESCRIBER else None,
        signed_at=at if signed else None,
    )


def sign_request(body: Any, where: str, at: datetime, tz: tzinfo) -> tuple[str, str | None]:
    fields = Fields(body, where, STEP_KEYS["sign"], tz)
    return fields.text("by", required=True) or "", fields.text("psf")


def advance_until(body: Any, where: str, at: datetime, tz: tzinfo) -> datetime:
    if not isinstance(body, dict):
        return at if body is None or body is True else aware(body, tz, where)
    fields = Fields(body, where, STEP_KEYS["advance_to"], tz)
    for key in ("to", "until"):
        if body.get(key) is not None:
            return fields.moment(key)
    return at


def adt_message(body: Any, where: str, at: datetime, tz: tzinfo) -> AdtStep:
    fields = Fields(body, where, STEP_KEYS["adt"], tz)
    event = (fields.text("event", required=True) or "").upper()
    if not ADT_EVENT.match(event):
        raise ScenarioError(f"{where}.event: {body['event']!r} is not an ADT event (A01, A40, …)")
    pid = fields.text("pid", required=True) or ""
    if not pid_values(pid):
        raise ScenarioError(f"{where}.pid: {pid!r} has no CX-1 value")
    mrg = fields.text("mrg")
    if mrg is not None and not pid_values(mrg):
        raise ScenarioError(f"{where}.mrg: {mrg!r} has no CX-1 value")
    return AdtStep(event, pid, mrg)


def review_act(body: Any, where: str, at: datetime, tz: tzinfo) -> ReviewStep:
    fields = Fields(body, where, STEP_KEYS["review"], tz)
    acts = [k for k in ("link", "discard") if body.get(k) is not None]
    if len(acts) != 1:
        raise ScenarioError(f"{where}: needs exactly one of `link` and `discard` (has {acts})")
    target = fields.text(acts[0]) or ""
    if acts[0] == "discard":
        unused = sorted({"to", "identifier"} & set(body))
        if unused:
            raise ScenarioError(f"{where}: {unused} belong to a link, not a discard")
        reason = fields.text("reason", required=True) or ""
        return ReviewStep("discard", target, reason=reason)
    if "reason" in body:
        raise ScenarioError(f"{where}.reason: a link has no reason (a discard does)")
    identifier = None
    if body.get("identifier") is not None:
        i = Fields(body["identifier"], f"{where}.identifier", {"system", "value"}, tz)
        identifier = Identifier(
            i.text("system", required=True) or "", i.text("value", required=True) or ""
        )
    return ReviewStep("link", target, to=fields.text("to", required=True), identifier=identifier)


def shipment_query(body: Any, where: str, at: datetime, tz: tzinfo) -> ShipmentQuery:
    """May wholesaler (or distributor) `wholesaler` (its registry id) ship clozapine to pharmacy
    `pharmacy` (NPI) on `on` (default the step's day)? (rules §10)"""
    fields = Fields(body, where, STEP_KEYS["ship_check"], tz)
    on = body.get("on")
    day = fields.day(on, "on") if on is not None else at.astimezone(tz).date()
    wholesaler = fields.text("wholesaler", required=True) or ""
    return ShipmentQuery(None, wholesaler, fields.text("pharmacy", required=True) or "", day)


def cds_hook(body: Any, where: str, at: datetime, tz: tzinfo) -> HookStep:
    try:
        return hook_step(body, where, aware, tz)
    except HookStepError as exc:
        raise ScenarioError(str(exc)) from None


def raw_message(body: Any, where: str, at: datetime, tz: tzinfo) -> Any:
    return body


PARSERS = {
    "lab": lab_results,
    "labs": lab_results,
    "dispense": dispense_request,
    "cancel": order_end,
    "dispensed": dispense_record,
    "psf": psf_form,
    "sign": sign_request,
    "advance_to": advance_until,
    "adt": adt_message,
    "review": review_act,
    "hook": cds_hook,
    "ship_check": shipment_query,
    "hl7": raw_message,
    "fhir": raw_message,
}
