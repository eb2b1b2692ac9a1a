"""The review queue's acts (docs/contracts.md §4, §5): identifiers attached to a registry patient
and the results that waited for them filed, an operator's link and discard, and the purge of
what was kept past its retention. Called inside the service's units of work."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.app import audit_records
from gateway.app.context import UnitContext
from gateway.app.errors import NotLinkable, ReviewClosed, UnknownPatient, UnknownReviewItem
from gateway.app.units import labs, worklist
from gateway.app.units.identity import AMBIGUOUS, PATIENT, UNMATCHED, lab_result
from gateway.app.values import Source
from rems_core.identity import REFERENCE_SYSTEM, Candidate, Rule, resolved
from rems_core.model import Identifier, LabResult, Patient
from rems_core.store.repo import Store

# --- attaching identifiers and filing what waited for them ---------------------------------------


@dataclass(frozen=True)
class Attached:
    added: list[Identifier] = field(default_factory=list)
    taken: list[Identifier] = field(default_factory=list)  # another registry patient's
    filed: list[str] = field(default_factory=list)  # review items filed to the patient


def attach(
    ctx: UnitContext,
    store: Store,
    patient: Patient,
    identifiers: Sequence[Identifier],
    source: Source,
    at: datetime,
) -> Attached:
    """New identifiers of a registry patient (audited; one another patient holds is left
    alone), then every held result of the patient's identifiers is filed, in clinical order."""
    added, taken = [], []
    for identifier in dict.fromkeys(identifiers):
        owner = store.find_patient([identifier])
        if owner is None:
            store.add_patient_identifier(patient.rems_id, identifier)
            store.append_audit(
                audit_records.registry_change(
                    ctx.now(),
                    source,
                    patient.rems_id,
                    "identifier added",
                    [identifier.system],
                    {"system": identifier.system, "value": identifier.value},
                    at,
                )
            )
            added.append(identifier)
        elif owner.rems_id != patient.rems_id:
            taken.append(identifier)
    mine = [i for i in identifiers if i not in taken]
    filed = file_held(
        ctx, store, patient, [*mine, *link_client_patients(store, patient, mine)], source, at
    )
    return Attached(added, taken, filed)


def link_client_patients(
    store: Store, patient: Patient, identifiers: Sequence[Identifier]
) -> list[Identifier]:
    """Client Patients carrying one of these identifiers, not linked yet, are now the
    patient's; their references, as keys of the results that wait for them."""
    references = []
    for resource_id in store.client_patients_with(identifiers):
        client = store.current_resource(PATIENT, resource_id)
        if client is not None and client.patient_id is None:
            store.link_resources([f"{PATIENT}/{resource_id}"], patient.rems_id)
            references.append(Identifier(REFERENCE_SYSTEM, f"{PATIENT}/{resource_id}"))
    return references


def file_held(
    ctx: UnitContext,
    store: Store,
    patient: Patient,
    keys: Sequence[Identifier],
    source: Source,
    at: datetime,
) -> list[str]:
    """Every open item waiting for one of ``keys``, filed to ``patient`` through the ordinary
    lab path, oldest arrival first (a result filed before is recognised, not counted twice)."""
    filed = []
    for item in store.held_for(keys):
        file_item(ctx, store, item, patient, source, at)
        filed.append(item["id"])
    return filed


def file_item(
    ctx: UnitContext,
    store: Store,
    item: dict[str, Any],
    patient: Patient,
    source: Source,
    at: datetime,
    results: Sequence[LabResult] | None = None,
) -> None:
    """``results``: what to file instead of the item's own (its message read again)."""
    arrival = Source(item["channel"], item["sender"])
    if results is None:
        results = [lab_result(r) for r in item["results"] or []]
    resources = item["resources"] or []
    ancs = labs.store_results(
        ctx, store, patient, list(results), arrival, item["received"], as_resources=not resources
    )
    store.link_resources(resources, patient.rems_id)
    store.resolve_review_item(
        item["id"],
        {
            "status": "linked",
            "resolved_at": at,
            "resolved_by": source.actor,
            "resolution": f"filed to {patient.rems_id}",
            "patient_id": patient.rems_id,
        },
    )
    worklist.result_resolved(ctx, store, item["id"], "linked", at, source)
    warnings = tuple(w.code for a in ancs for w in a.warnings)
    store.append_audit(
        audit_records.review(
            ctx.now(), source, at, [item["id"]], "linked", patient.rems_id, warnings
        )
    )


# --- the operator's acts -----------------------------------------------------------------------


@dataclass(frozen=True)
class Linked:
    item_id: str
    patient_id: str
    attached: Attached


def link(
    ctx: UnitContext,
    store: Store,
    item_id: str,
    patient_id: str,
    identifier: Identifier | None,
    source: Source,
    at: datetime,
) -> Linked:
    """An operator names the registry patient an item is of. For results of no patient, the
    identifier (``identifier``, else every one the item resolved) is attached to the patient,
    so later messages match, and every result held for it is filed; an ambiguous item is filed
    to the one of its patients the operator names."""
    item = open_item(store, item_id)
    patient = store.patient(patient_id)
    if patient is None:
        raise UnknownPatient(patient_id)
    if item["kind"] == AMBIGUOUS:
        if patient_id not in (item["patients"] or []):
            raise NotLinkable("an ambiguous item is filed to one of the patients it names")
        file_item(ctx, store, item, patient, source, at)
        return Linked(item_id, patient_id, Attached(filed=[item_id]))
    if item["kind"] != UNMATCHED:
        raise NotLinkable(f"a {item['kind']} item is not linked: show it, or discard it")
    candidates = [Candidate.from_dict(c) for c in item["candidates"] or []]
    identifiers = _chosen(candidates, identifier)
    references = [c.value for c in candidates if c.rule == Rule.REFERENCE]
    for reference in references:
        client = store.current_resource(PATIENT, reference.removeprefix(f"{PATIENT}/"))
        if client is not None and client.patient_id is None:
            store.link_resources([reference], patient_id)
    attached = attach(ctx, store, patient, identifiers, source, at)
    keys = [Identifier(REFERENCE_SYSTEM, r) for r in references]
    filed = attached.filed + file_held(ctx, store, patient, keys, source, at)
    if store.review_item(item_id)["status"] == "open":  # type: ignore[index]
        file_item(ctx, store, item, patient, source, at)  # e.g. a bare value nothing resolved
        filed.append(item_id)
    return Linked(item_id, patient_id, Attached(attached.added, attached.taken, filed))


def _chosen(candidates: list[Candidate], identifier: Identifier | None) -> list[Identifier]:
    if identifier is None:
        return [i for i in resolved(candidates) if i.system != REFERENCE_SYSTEM]
    if identifier.value not in {c.value for c in candidates}:
        raise NotLinkable("the identifier's value is not one the item carries")
    return [identifier]


def discard(
    ctx: UnitContext, store: Store, item_id: str, reason: str, source: Source, at: datetime
) -> None:
    """An operator decides an item is nobody's business here: who, when and why are kept."""
    if not reason.strip():
        raise NotLinkable("a discard needs a reason")
    open_item(store, item_id)
    store.resolve_review_item(
        item_id,
        {
            "status": "discarded",
            "resolved_at": at,
            "resolved_by": source.actor,
            "resolution": reason,
        },
    )
    worklist.result_resolved(ctx, store, item_id, "discarded", at, source)
    store.append_audit(audit_records.review(ctx.now(), source, at, [item_id], "discarded"))


def open_item(store: Store, item_id: str) -> dict[str, Any]:
    item = store.review_item(item_id)
    if item is None:
        raise UnknownReviewItem(item_id)
    if item["status"] != "open":
        raise ReviewClosed(item["status"])
    return item


def purge(ctx: UnitContext, store: Store, until: datetime, source: Source) -> list[str]:
    """Items whose retention ended before ``until`` lose their values (results, identifiers,
    held resources and message bodies); one audit record names them."""
    expired = store.review_expiring(until)
    for item in expired:
        store.drop_resources(item["resources"] or [])
        if item["message"]:
            sender, _, control_id = item["message"].rpartition("#")
            store.forget_message_body(sender, control_id)
        store.resolve_review_item(
            item["id"],
            {
                "status": "purged",
                "candidates": [],
                "results": [],
                "resources": [],
                "resolved_at": until,
                "resolved_by": source.actor,
                "resolution": "retention ended",
            },
        )
        worklist.result_resolved(ctx, store, item["id"], "purged", until, source)
    ids = [item["id"] for item in expired]
    if ids:
        store.append_audit(audit_records.review(ctx.now(), source, until, ids, "purged"))
    return ids
