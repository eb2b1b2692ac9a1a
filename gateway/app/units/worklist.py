"""The worklist kept in step with the patient's file (docs/contracts.md §7), inside the unit of
work that changed the file or the scheduled work: the monthly PSF draft written (a new version
only when what it pre-fills changed), the tasks the file calls for opened — each occurrence
once, by its key — and those whose condition cleared closed. Every task change is audited and
published to the task topic; a draft's new version is not."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from gateway.app import audit_records
from gateway.app.context import UnitContext
from gateway.app.units import notifications
from gateway.app.values import Source
from mappings.fhir.content import content_hash, content_hashes
from mappings.fhir.worklist import (
    PREFILL_ASIDE,
    TASK_SYSTEM,
    draft_body,
    stopped,
    task_body,
)
from rems_core.model import Patient, Setting, TreatmentStatus
from rems_core.rulepack import OutOfScope
from rems_core.store.fhir_repo import ResourceHead, ResourceIndex, StoredResource
from rems_core.store.repo import Store
from rems_core.worklist import PsfDraft, TaskKind, TaskNeed, Worklist, worklist

TASK = "Task"
RESPONSE = "QuestionnaireResponse"
REQUESTED, COMPLETED, CANCELLED = "requested", "completed", "cancelled"
OPEN, SUBMITTED, WITHDRAWN = "open", "submitted", "withdrawn"

#: Why a task closed when its condition cleared, by kind.
CLEARED = {
    TaskKind.PSF_DUE: "a PSF was accepted for the period",
    TaskKind.PSF_WINDOW_CLOSING: "a PSF was accepted for the period",
    TaskKind.RATIONALE_REQUIRED: "no rationale is needed any more (one was accepted, or a newer "
    "ANC is not low)",
    TaskKind.ANC_OVERDUE: "a newer usable ANC arrived",
    TaskKind.LABS_MISSED: "a newer usable ANC arrived",
    TaskKind.SIGNATURE_PENDING: "the PSF was signed or rejected",
    TaskKind.UNMATCHED_RESULT: "the result was filed to a registry patient",
}
#: The drafted kinds whose focus is the open draft.
ABOUT_THE_DRAFT = {TaskKind.PSF_DUE, TaskKind.PSF_WINDOW_CLOSING, TaskKind.RATIONALE_REQUIRED}


def refresh(
    ctx: UnitContext, store: Store, patient_id: str, until: datetime, source: Source
) -> None:
    """The patient's draft and tasks as the file calls for them at ``until``."""
    patient = store.patient(patient_id)
    if patient is not None:
        refresh_for(ctx, store, patient, until, source)


def refresh_for(
    ctx: UnitContext, store: Store, patient: Patient, until: datetime, source: Source
) -> None:
    """``refresh`` for a patient the unit has read already."""
    try:
        pack = ctx.pack_for(until)
    except OutOfScope:
        return
    since = until - timedelta(days=pack.psf_window.value)
    settings = store.dispense_settings_since(patient.rems_id, since)
    inpatient_only = bool(settings) and all(s == Setting.INPATIENT.value for s in settings)
    work = worklist(pack, store.snapshot(patient), until, ctx.tz, inpatient_only)
    draft_ref = keep_draft(store, patient.rems_id, work, until, ctx)
    keep_tasks(ctx, store, patient.rems_id, work, draft_ref, until, source)


# --- the monthly draft ---------------------------------------------------------------------------


def keep_draft(
    store: Store, patient_id: str, work: Worklist, until: datetime, ctx: UnitContext
) -> str | None:
    """The draft's reference ("QuestionnaireResponse/<id>") while one is open."""
    open_rows = store.open_drafts(patient_id)
    wanted = work.draft or _holding_rationale(open_rows, work)
    for draft in open_rows:
        if wanted is None or draft["due"] != wanted.due:
            _withdraw(store, draft, until)
    if wanted is None:
        return None
    row = next((d for d in open_rows if d["due"] == wanted.due), None)
    if row is None:
        row = store.draft_for(patient_id, wanted.due)
    if row is None:
        return f"{RESPONSE}/{_open_draft(store, patient_id, wanted, until, ctx)}"
    if row["status"] == OPEN:
        _update_draft(store, row, wanted, patient_id, until)
        return f"{RESPONSE}/{row['id']}"
    return None  # submitted (accepted or pending a signature) or withdrawn: not reopened


def _holding_rationale(open_rows: list[dict[str, Any]], work: Worklist) -> PsfDraft | None:
    """The period's draft before its lead time, when it holds a prescriber's rationale (a CDS
    override): kept open for the signature."""
    if work.period is None:
        return None
    due = work.period.due
    held = any(d["due"] == due and d["rationale"] is not None for d in open_rows)
    return work.period if held else None


def hold_rationale(
    ctx: UnitContext,
    store: Store,
    patient_id: str,
    rationale: dict[str, Any],
    until: datetime,
    source: Source,
) -> str | None:
    """The period's PSF draft, opened if need be, now holding ``rationale`` for the prescriber
    to sign (rules §5.2); None when no draft can hold it (no accepted PSF to draft from,
    treatment stopped, or the period's PSF is already submitted)."""
    patient = store.patient(patient_id)
    if patient is None:
        return None
    try:
        pack = ctx.pack_for(until)
    except OutOfScope:
        return None
    work = worklist(pack, store.snapshot(patient), until, ctx.tz)
    if work.period is None:
        return None
    row = store.draft_for(patient_id, work.period.due)
    if row is None:
        draft_id = _open_draft(store, patient_id, work.period, until, ctx, rationale)
    elif row["status"] == OPEN:
        draft_id = row["id"]
        store.update_draft(draft_id, rationale=rationale)
        _update_draft(store, {**row, "rationale": rationale}, work.period, patient_id, until)
    else:
        return None
    refresh(ctx, store, patient_id, until, source)
    return draft_id


def _open_draft(
    store: Store,
    patient_id: str,
    draft: PsfDraft,
    until: datetime,
    ctx: UnitContext,
    rationale: dict[str, Any] | None = None,
) -> str:
    draft_id = ctx.ids.new_id("psfd")
    body = draft_body(draft, patient_id, until, rationale)
    digest, pre_filled = content_hashes(body, PREFILL_ASIDE)
    store.put_resource(RESPONSE, draft_id, body, digest, _draft_index(patient_id), until)
    store.add_draft(
        {
            "id": draft_id,
            "patient_id": patient_id,
            "prescriber_npi": draft.prescriber_npi,
            "period_start": draft.period_start,
            "due": draft.due,
            "status": OPEN,
            "prefill_hash": pre_filled,
            "opened": until,
            "rationale": rationale,
        }
    )
    return draft_id


def _update_draft(
    store: Store, row: dict[str, Any], draft: PsfDraft, patient_id: str, until: datetime
) -> None:
    """A new version when the labs changed what it pre-fills — or when a completion of it was
    rejected (the rejected version stays in its history, with its outcome)."""
    body = draft_body(draft, patient_id, until, row.get("rationale"))
    digest, pre_filled = content_hashes(body, PREFILL_ASIDE)
    current: StoredResource | ResourceHead | None
    if pre_filled == row["prefill_hash"]:
        current = store.current_resource(RESPONSE, row["id"])
        if current is not None and current.body.get("status") == "in-progress":
            return
    else:
        current = store.current_head(RESPONSE, row["id"])
    index = _draft_index(patient_id)
    store.put_resource(RESPONSE, row["id"], body, digest, index, until, current)
    store.update_draft(row["id"], prefill_hash=pre_filled, prescriber_npi=draft.prescriber_npi)


def _withdraw(store: Store, row: dict[str, Any], until: datetime) -> None:
    """A draft no longer needed (a PSF was accepted without it, or treatment stopped)."""
    current = store.current_resource(RESPONSE, row["id"])
    if current is not None and current.body.get("status") == "in-progress":
        index = _draft_index(row["patient_id"])
        _put(store, RESPONSE, row["id"], stopped(current.body), index, until, current)
    store.update_draft(row["id"], status=WITHDRAWN, closed=until)


def draft_submitted(store: Store, draft_id: str, at: datetime) -> None:
    """A completion of the draft was accepted, or is held for the prescriber's signature."""
    store.update_draft(draft_id, status=SUBMITTED, closed=at)


def _draft_index(patient_id: str) -> ResourceIndex:
    return ResourceIndex(None, patient_id, "clozapine-psf", None)


# --- tasks ---------------------------------------------------------------------------------------


def task_key(kind: TaskKind, whom: str, period: str) -> str:
    return f"{kind.value}|{whom}|{period}"


def keep_tasks(
    ctx: UnitContext,
    store: Store,
    patient_id: str,
    work: Worklist,
    draft_ref: str | None,
    until: datetime,
    source: Source,
) -> None:
    wanted = {task_key(n.kind, patient_id, n.period): n for n in work.needs}
    open_now = {t["key"]: t for t in store.open_tasks(patient_id)}
    for key, need in wanted.items():
        if key not in open_now and store.task_by_key(key) is None:
            focus = draft_ref if need.kind in ABOUT_THE_DRAFT else need.focus
            open_task(ctx, store, key, need, patient_id, focus, until, source)
    stopped_why = None if work.status == TreatmentStatus.ACTIVE else f"treatment is {work.status}"
    for key, task in open_now.items():
        if key not in wanted:
            kind = TaskKind(task["kind"])
            status = CANCELLED if stopped_why else COMPLETED
            close_task(ctx, store, task, status, stopped_why or CLEARED[kind], until, source)


def open_task(
    ctx: UnitContext,
    store: Store,
    key: str,
    need: TaskNeed,
    patient_id: str | None,
    focus: str | None,
    until: datetime,
    source: Source,
) -> None:
    row = {
        "id": ctx.ids.new_id("task"),
        "key": key,
        "kind": need.kind.value,
        "patient_id": patient_id,
        "owner_npi": need.owner_npi,
        "designee_may": need.designee_may,
        "focus": focus,
        "status": REQUESTED,
        "opened": until,
        "due": need.due,
        "closed": None,
        "reason": need.reason,
        "closed_why": "",
    }
    store.add_task(row)
    _task_changed(ctx, store, row, until, source)


def close_task(
    ctx: UnitContext,
    store: Store,
    task: dict[str, Any],
    status: str,
    why: str,
    until: datetime,
    source: Source,
) -> None:
    store.close_task(task["id"], status, until, why)
    _task_changed(
        ctx, store, {**task, "status": status, "closed": until, "closed_why": why}, until, source
    )


def _task_changed(
    ctx: UnitContext, store: Store, row: dict[str, Any], until: datetime, source: Source
) -> None:
    body = task_body(row)
    index = ResourceIndex(
        f"{TASK_SYSTEM}|{row['key']}", row["patient_id"], row["kind"], row["opened"]
    )
    stored = _put(store, TASK, row["id"], body, index, until)
    store.append_audit(audit_records.task_change(ctx.now(), source, row, until))
    attributes = {"code": row["kind"], "status": row["status"]}
    if row["patient_id"]:
        attributes["patient"] = f"Patient/{row['patient_id']}"
    if row["owner_npi"]:
        attributes["owner"] = f"Practitioner/{row['owner_npi']}"
    event = notifications.Event(notifications.TASK_TOPIC, f"{TASK}/{row['id']}", stored, attributes)
    notifications.publish(ctx, store, event)


# --- results of nobody: the operator's tasks -----------------------------------------------------


def result_held(
    ctx: UnitContext,
    store: Store,
    item_id: str,
    resources: list[str],
    at: datetime,
    source: Source,
) -> None:
    """An unmatched or ambiguous result waits in the review queue: a task for the operator."""
    need = TaskNeed(
        TaskKind.UNMATCHED_RESULT,
        item_id,
        None,
        False,
        None,
        f"review item {item_id}: a result of no registry patient, or of two",
    )
    focus = resources[0] if resources else None
    key = task_key(TaskKind.UNMATCHED_RESULT, "review", item_id)
    open_task(ctx, store, key, need, None, focus, at, source)


def result_resolved(
    ctx: UnitContext, store: Store, item_id: str, status: str, at: datetime, source: Source
) -> None:
    """The review item was linked (the task is done), or discarded or purged (cancelled)."""
    task = store.task_by_key(task_key(TaskKind.UNMATCHED_RESULT, "review", item_id))
    if task is None or task["status"] != REQUESTED:
        return
    if status == "linked":
        close_task(ctx, store, task, COMPLETED, CLEARED[TaskKind.UNMATCHED_RESULT], at, source)
    else:
        close_task(ctx, store, task, CANCELLED, f"the review item was {status}", at, source)


def _put(
    store: Store,
    resource_type: str,
    resource_id: str,
    body: dict[str, Any],
    index: ResourceIndex,
    at: datetime,
    current: StoredResource | None = None,
) -> dict[str, Any]:
    """The next version of one of the gateway's own resources (after ``current``, when the
    caller has read it); the stored body."""
    if current is None:
        current = store.current_resource(resource_type, resource_id)
    stored = store.put_resource(
        resource_type, resource_id, body, content_hash(body), index, at, current
    )
    return stored.body
