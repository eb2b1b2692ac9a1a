"""The worklist in the store: tasks (one row per occurrence, the key unique) and the monthly PSF
drafts (one per patient and due date); their FHIR versions are in ``fhir_resource``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update

from rems_core.store import tables as t
from rems_core.store.prepared import PreparedInsert, PreparedQuery

task_t = t.MonitoringTaskRow.__table__
draft_t = t.PsfDraftRow.__table__
decision_t = t.DecisionRow.__table__

REQUESTED = "requested"
OPEN_DRAFT = "open"


@dataclass(frozen=True)
class TaskFilter:
    """`GET /fhir/Task` and `rems-gateway tasks`: each given field must match."""

    patient_id: str | None = None
    owner_npi: str | None = None
    status: str | None = None
    kind: str | None = None
    focus: str | None = None
    count: int = 100
    offset: int = 0


# Built and compiled once: the worklist is refreshed in every unit that touches a patient's labs.
_open_tasks = PreparedQuery(
    select(task_t)
    .where(task_t.c.patient_id == bindparam("patient_id"), task_t.c.status == REQUESTED)
    .order_by(task_t.c.opened, task_t.c.id)
)
_task_by_key = PreparedQuery(select(task_t).where(task_t.c.key == bindparam("key")))
_open_work = PreparedQuery(
    select(task_t.c.id)
    .where(task_t.c.patient_id == bindparam("patient_id"), task_t.c.status == REQUESTED)
    .union_all(
        select(draft_t.c.id).where(
            draft_t.c.patient_id == bindparam("patient_id"), draft_t.c.status == OPEN_DRAFT
        )
    )
    .limit(1)
)
_add_task = PreparedInsert(insert(task_t))
_close_task = PreparedQuery(
    update(task_t)
    .where(task_t.c.id == bindparam("task_id"))
    .values(
        status=bindparam("to_status", type_=task_t.c.status.type),
        closed=bindparam("at", type_=task_t.c.closed.type),
        closed_why=bindparam("why", type_=task_t.c.closed_why.type),
    )
)
_open_drafts = PreparedQuery(
    select(draft_t).where(
        draft_t.c.patient_id == bindparam("patient_id"), draft_t.c.status == OPEN_DRAFT
    )
)
_draft_for = PreparedQuery(
    select(draft_t).where(
        draft_t.c.patient_id == bindparam("patient_id"), draft_t.c.due == bindparam("due")
    )
)
_add_draft = PreparedInsert(insert(draft_t))
_draft_updates: dict[tuple[str, ...], PreparedQuery] = {}
_dispense_settings = PreparedQuery(
    select(decision_t.c.request).where(
        decision_t.c.patient_id == bindparam("patient_id"), decision_t.c.at >= bindparam("since")
    )
)


def _draft_update(columns: tuple[str, ...]) -> PreparedQuery:
    """The UPDATE of these columns of one draft (the set of columns a caller changes varies)."""
    statement = _draft_updates.get(columns)
    if statement is None:
        values = {c: bindparam(f"new_{c}", type_=draft_t.c[c].type) for c in columns}
        statement = _draft_updates[columns] = PreparedQuery(
            update(draft_t).where(draft_t.c.id == bindparam("draft_id")).values(values)
        )
    return statement


class WorklistRepo:
    conn: Connection

    # --- tasks ---------------------------------------------------------------------------------

    def open_tasks(self, patient_id: str) -> list[dict[str, Any]]:
        """The patient's requested tasks, oldest first."""
        return [r._asdict() for r in _open_tasks.rows(self.conn, {"patient_id": patient_id})]

    def task_by_key(self, key: str) -> dict[str, Any] | None:
        row = _task_by_key.first(self.conn, {"key": key})
        return row._asdict() if row is not None else None

    def has_open_work(self, patient_id: str) -> bool:
        """Whether the patient has a requested task or an open draft (one indexed probe each)."""
        return _open_work.first(self.conn, {"patient_id": patient_id}) is not None

    def add_task(self, values: dict[str, Any]) -> None:
        _add_task.run(self.conn, [values])

    def close_task(self, task_id: str, status: str, at: datetime, why: str) -> None:
        _close_task.run(self.conn, {"task_id": task_id, "to_status": status, "at": at, "why": why})

    def tasks(self, wanted: TaskFilter) -> tuple[list[dict[str, Any]], int]:
        """One page of the tasks that match, newest first, and how many match in all."""
        where = [
            column == value
            for column, value in (
                (task_t.c.patient_id, wanted.patient_id),
                (task_t.c.owner_npi, wanted.owner_npi),
                (task_t.c.status, wanted.status),
                (task_t.c.kind, wanted.kind),
                (task_t.c.focus, wanted.focus),
            )
            if value is not None
        ]
        total = self.conn.execute(
            select(func.count()).select_from(task_t).where(*where)
        ).scalar_one()
        rows = self.conn.execute(
            select(task_t)
            .where(*where)
            .order_by(task_t.c.opened.desc(), task_t.c.id)
            .limit(wanted.count)
            .offset(wanted.offset)
        ).all()
        return [dict(r._mapping) for r in rows], total

    # --- monthly PSF drafts --------------------------------------------------------------------

    def open_drafts(self, patient_id: str) -> list[dict[str, Any]]:
        return [r._asdict() for r in _open_drafts.rows(self.conn, {"patient_id": patient_id})]

    def draft_for(self, patient_id: str, due: date) -> dict[str, Any] | None:
        row = _draft_for.first(self.conn, {"patient_id": patient_id, "due": due})
        return row._asdict() if row is not None else None

    def draft(self, draft_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(select(draft_t).where(draft_t.c.id == draft_id)).first()
        return dict(row._mapping) if row is not None else None

    def add_draft(self, values: dict[str, Any]) -> None:
        _add_draft.run(self.conn, [values])

    def update_draft(self, draft_id: str, **values: Any) -> None:
        columns = tuple(sorted(values))
        parameters = {f"new_{c}": values[c] for c in columns}
        _draft_update(columns).run(self.conn, {"draft_id": draft_id, **parameters})

    def dispense_settings_since(self, patient_id: str, since: datetime) -> list[str]:
        """The settings (inpatient, outpatient) of the patient's dispense decisions since then."""
        rows = _dispense_settings.rows(self.conn, {"patient_id": patient_id, "since": since})
        return [str((r.request or {}).get("setting", "")) for r in rows]
