"""Scenario files (contracts.md §2): reading them, and their steps as domain requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

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
from rems_core.registry import RegistryDocument, RegistryInvalid, registry_from
from rems_core.rulepack import DEFAULT_PACK

STEP_KINDS = ("lab", "labs", "dispense", "psf", "sign", "advance_to", "hl7", "fhir")
EXPECT_KEYS = frozenset(
    {
        "outcome",
        "reasons",
        "warnings",
        "anc",
        "category",
        "accepted",
        "status",
        "max_days_supply",
        "ack",
        "http_status",
    }
)
DEFAULT_DRUG = "197536"  # clozapine 100 MG Oral Tablet (an SCD of ingredient 2626)

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


class _DecimalLoader(yaml.SafeLoader):
    """Numbers with a fraction stay exact decimals (0.8 is 0.8, not a binary float)."""


_DecimalLoader.add_constructor(
    "tag:yaml.org,2002:float",
    lambda loader, node: Decimal(loader.construct_scalar(node).replace("_", "")),
)


@dataclass
class Step:
    index: int
    at: datetime
    kind: str
    body: Any
    expect: dict[str, Any]
    raw: dict[str, Any]

    @property
    def label(self) -> str:
        return f"step {self.index} ({self.kind} at {self.at.isoformat()})"


@dataclass
class Scenario:
    path: Path
    name: str
    rules: str
    tz: tzinfo
    registry: RegistryDocument
    steps: list[Step] = field(default_factory=list)
    handles: dict[str, list[Identifier]] = field(default_factory=dict)


def aware(value: Any, tz: tzinfo) -> datetime:
    """A step's time: ISO text, a YAML timestamp or a date; local to the file's zone if naive."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time(0))
    if not isinstance(value, datetime):
        raise ScenarioError(f"{value!r} is not a time")
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(UTC)


def _day(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


def load(path: Path) -> Scenario:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_DecimalLoader)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ScenarioError("a scenario file is a mapping with name, registry and steps")
    unknown = set(data) - {"name", "rules", "timezone", "registry", "steps", "description"}
    if unknown:
        raise ScenarioError(f"unknown top-level keys: {', '.join(sorted(map(str, unknown)))}")
    tz = ZoneInfo(data.get("timezone") or "UTC")
    try:
        registry = registry_from(_stringify(data.get("registry") or {}))
    except RegistryInvalid as exc:
        raise ScenarioError(f"registry: {exc}") from None
    scenario = Scenario(
        path=path,
        name=str(data.get("name") or path.stem),
        rules=str(data.get("rules") or DEFAULT_PACK),
        tz=tz,
        registry=registry,
    )
    for patient in registry.patients:
        handle = patient.id or patient.identifiers[0].value
        scenario.handles[handle] = [Identifier(i.system, i.value) for i in patient.identifiers]
    for index, raw in enumerate(data.get("steps") or [], start=1):
        scenario.steps.append(_step(index, raw, tz))
    return scenario


def _stringify(value: Any) -> Any:
    """Decimals from the loader become text where the registry schema expects it."""
    if isinstance(value, dict):
        return {k: _stringify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stringify(v) for v in value]
    return str(value) if isinstance(value, Decimal) else value


def _step(index: int, raw: Any, tz: tzinfo) -> Step:
    if not isinstance(raw, dict):
        raise ScenarioError(f"step {index}: a step is a mapping")
    kinds = [k for k in STEP_KINDS if k in raw]
    unknown = set(raw) - {*STEP_KINDS, "at", "expect", "patient", "note", "description"}
    if len(kinds) != 1 or unknown:
        problem = f"unknown keys {sorted(map(str, unknown))}" if unknown else f"kinds {kinds}"
        raise ScenarioError(
            f"step {index}: needs exactly one step kind of {STEP_KINDS} ({problem})"
        )
    expect = raw.get("expect") or {}
    bad = set(expect) - EXPECT_KEYS
    if bad:
        raise ScenarioError(f"step {index}: unknown expect keys {sorted(map(str, bad))}")
    if "at" not in raw:
        raise ScenarioError(f"step {index}: every step needs `at`")
    return Step(index, aware(raw["at"], tz), kinds[0], raw[kinds[0]], expect, raw)


def lab_results(items: list[dict[str, Any]], tz: tzinfo) -> list[LabResult]:
    results = []
    for item in items:
        status_text = str(item.get("status", "final")).lower()
        if status_text not in RESULT_STATUS:
            raise ScenarioError(f"unknown result status {status_text!r}")
        specimen = item.get("specimen")
        results.append(
            LabResult(
                code=str(item["code"]),
                value=str(item.get("value", "")),
                unit=str(item.get("unit", "")),
                drawn=aware(item["drawn"], tz),
                status=RESULT_STATUS[status_text],
                specimen=str(specimen) if specimen is not None else None,
            )
        )
    return results


def reported_ancs(items: Any, tz: tzinfo) -> tuple[ReportedAnc, ...]:
    if items is None:
        return ()
    if isinstance(items, dict):
        items = [items]
    return tuple(
        ReportedAnc(
            value=str(a["value"]),
            unit=str(a.get("unit", "/uL")),
            drawn=aware(a["drawn"], tz),
            code=str(a.get("code", "751-8")),
        )
        for a in items
    )


def dispense_request(body: dict[str, Any], at: datetime, tz: tzinfo) -> DispenseRequest:
    override = None
    if "override" in body and body["override"] is not None:
        o = body["override"]
        anc = reported_ancs(o.get("anc"), tz)
        override = Override(
            prescriber_npi=str(o["prescriber_npi"]) if o.get("prescriber_npi") else None,
            anc=anc[0] if anc else None,
            rationale=o.get("rationale"),
        )
    return DispenseRequest(
        pharmacy_npi=str(body.get("pharmacy", "")),
        prescriber_npi=str(body.get("prescriber", "")),
        setting=Setting(body.get("setting", "outpatient")),
        dispense_date=at,
        days_supply=int(body.get("days_supply", 7)),
        drug=str(body.get("drug", DEFAULT_DRUG)),
        discharge=bool(body.get("discharge", False)),
        request_id=str(body["request_id"]) if body.get("request_id") is not None else None,
        override=override,
    )


def psf_form(body: dict[str, Any], at: datetime, tz: tzinfo) -> PatientStatusForm:
    by = str(body["by"])
    role = SubmitterRole(body.get("role", "prescriber"))
    rationale = body.get("rationale")
    frequency = body.get("monitoring_frequency")
    designation = body.get("designation")
    effective = body.get("status_effective")
    return PatientStatusForm(
        type=PsfType(body.get("type", "monthly")),
        submitted_at=at,
        submitter=by,
        role=role,
        prescriber_npi=str(body.get("prescriber", by)),
        designation=Designation(designation) if designation else None,
        treatment_status=TreatmentStatus(body.get("treatment_status", "active")),
        status_effective=_day(effective) if effective else None,
        monitoring_frequency=MonitoringFrequency(frequency) if frequency else None,
        anc=reported_ancs(body.get("anc"), tz),
        missed_draws=tuple(_day(d) for d in body.get("missed_draws") or ()),
        justification=str(body.get("justification", "")),
        rationale=Rationale(str(rationale["reason"]), str(rationale.get("text") or ""))
        if rationale
        else None,
        signed=bool(body.get("signed", False)),
        signed_by=by if body.get("signed") and role == SubmitterRole.PRESCRIBER else None,
        signed_at=at if body.get("signed") else None,
    )
