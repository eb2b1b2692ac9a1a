"""Who a result is about (docs/contracts.md §4, §5): identifier candidates matched to registry
patients, and what matches none or two held for review (review.py files it later). Called
inside the service's units of work."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.app import audit_records
from gateway.app.context import UnitContext
from gateway.app.units import worklist
from gateway.app.values import REVIEW_KINDS, Source
from rems_core.identity import Candidate, Rule, resolved
from rems_core.model import Finding, LabResult, Patient, ResultStatus
from rems_core.store.repo import Store

UNMATCHED, AMBIGUOUS, CONFLICT, MERGE = REVIEW_KINDS
RETAINED = (UNMATCHED, AMBIGUOUS)  # results of people the registry may not know: purged in time
PATIENT = "Patient"


@dataclass(frozen=True)
class Match:
    patients: tuple[Patient, ...]

    @property
    def patient(self) -> Patient | None:
        return self.patients[0] if len(self.patients) == 1 else None

    @property
    def ambiguous(self) -> bool:
        return len(self.patients) > 1


def match(store: Store, candidates: Sequence[Candidate]) -> Match:
    """The registry patients the candidates name: by identifier (system and value, never name
    or birth date), and a `Patient/{id}` by the registry's id or the client Patient's link."""
    identifiers = [c.identifier for c in candidates if c.rule != Rule.REFERENCE and c.identifier]
    found = {p.rems_id: p for p in store.patients_named(i for i in identifiers if i is not None)}
    for candidate in candidates:
        if candidate.rule == Rule.REFERENCE:
            patient = patient_of_reference(store, candidate.value)
            if patient is not None:
                found.setdefault(patient.rems_id, patient)
    return Match(tuple(found.values()))


def patient_of_reference(store: Store, reference: str) -> Patient | None:
    resource_id = reference.removeprefix(f"{PATIENT}/")
    patient = store.patient(resource_id)
    if patient is not None:
        return patient
    client = store.current_resource(PATIENT, resource_id)
    if client is None or client.patient_id is None:
        return None
    return store.patient(client.patient_id)


@dataclass(frozen=True)
class Held:
    """One item for the review queue."""

    kind: str
    candidates: Sequence[Candidate]
    source: Source
    received: datetime
    findings: tuple[Finding, ...]
    results: Sequence[LabResult] = ()
    patients: Sequence[str] = ()  # the registry patients it names (ambiguous, merge)
    resources: Sequence[str] = ()  # the FHIR resources it came as ("Observation/id")
    message: str | None = None  # "MSH-3|MSH-4#MSH-10"


def hold(ctx: UnitContext, store: Store, held: Held) -> str:
    """The item's id. Results of no patient wait for their identifiers (and references); they
    and ambiguous ones are purged after the retention."""
    item_id = ctx.ids.new_id("rev")
    keys = resolved(list(held.candidates)) if held.kind == UNMATCHED else []
    store.add_review_item(
        {
            "id": item_id,
            "kind": held.kind,
            "status": "open",
            "channel": held.source.channel,
            "sender": held.source.actor,
            "received": held.received,
            "candidates": [c.as_dict() for c in held.candidates],
            "results": [result_dict(r) for r in held.results],
            "findings": [f.as_dict() for f in held.findings],
            "patients": list(held.patients),
            "message": held.message,
            "resources": list(held.resources),
            "purge_after": held.received + ctx.review_retention if held.kind in RETAINED else None,
            "resolution": "",
        },
        keys,
    )
    codes = tuple(f.code for f in held.findings)
    store.append_audit(
        audit_records.review(ctx.now(), held.source, held.received, [item_id], "held", None, codes)
    )
    if held.kind in (UNMATCHED, AMBIGUOUS):
        worklist.result_held(ctx, store, item_id, list(held.resources), held.received, held.source)
    return item_id


def result_dict(result: LabResult) -> dict[str, Any]:
    return {
        "code": result.code,
        "value": result.value,
        "unit": result.unit,
        "drawn": result.drawn.isoformat(),
        "status": result.status.value,
        "specimen": result.specimen,
    }


def lab_result(data: dict[str, Any]) -> LabResult:
    return LabResult(
        code=data["code"],
        value=data["value"],
        unit=data["unit"],
        drawn=datetime.fromisoformat(data["drawn"]),
        status=ResultStatus(data["status"]),
        specimen=data.get("specimen"),
    )
