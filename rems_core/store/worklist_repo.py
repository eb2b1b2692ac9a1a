"""The worklist in the store: tasks (one row per occurrence, the key unique) and the monthly PSF
drafts (one per patient and due date); their FHIR versions are in ``fhir_resource``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from rems_core.store import tables as t

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


class WorklistRepo:
    conn: Connection

    # --- tasks ---------------------------------------------------------------------------------

    def open_tasks(self, patient_id: str) -> list[dict[str, Any]]:
        """The patient's requested tasks, oldest first."""
        rows = self.conn.execute(
            select(task_t)
            .where(task_t.c.patient_id == patient_id, task_t.c.status == REQUESTED)
            .order_by(task_t.c.opened, task_t.c.id)
        ).all()
        return [dict(r._mapping) for r in rows]

    def task_by_key(self, key: str) -> dict[str, Any] | None:
        row = self.conn.execute(select(task_t).where(task_t.c.key == key)).first()
        return dict(row._mapping) if row is not None else None

    def has_open_work(self, patient_id: str) -> bool:
        """Whether the patient has a requested task or an open draft (one indexed probe each)."""
        task = select(task_t.c.id).where(
            task_t.c.patient_id == patient_id, task_t.c.status == REQUESTED
        )
        draft = select(draft_t.c.id).where(
            draft_t.c.patient_id == patient_id, draft_t.c.status == OPEN_DRAFT
        )
        return self.conn.execute(task.union_all(draft).limit(1)).first() is not None

    def add_task(self, values: dict[str, Any]) -> None:
        self.conn.execute(insert(task_t).values(**values))

    def close_task(self, task_id: str, status: str, at: datetime, why: str) -> None:
        self.conn.execute(
            update(task_t)
            .where(task_t.c.id == task_id)
            .values(status=status, closed=at, closed_why=why)
        )

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
        rows = self.conn.execute(
            select(draft_t).where(
                draft_t.c.patient_id == patient_id, draft_t.c.status == OPEN_DRAFT
            )
        ).all()
        return [dict(r._mapping) for r in rows]

    def draft_for(self, patient_id: str, due: date) -> dict[str, Any] | None:
        row = self.conn.execute(
            select(draft_t).where(draft_t.c.patient_id == patient_id, draft_t.c.due == due)
        ).first()
        return dict(row._mapping) if row is not None else None

    def draft(self, draft_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(select(draft_t).where(draft_t.c.id == draft_id)).first()
        return dict(row._mapping) if row is not None else None

    def add_draft(self, values: dict[str, Any]) -> None:
        self.conn.execute(insert(draft_t).values(**values))

    def update_draft(self, draft_id: str, **values: Any) -> None:
        self.conn.execute(update(draft_t).where(draft_t.c.id == draft_id).values(**values))

    def dispense_settings_since(self, patient_id: str, since: datetime) -> list[str]:
        """The settings (inpatient, outpatient) of the patient's dispense decisions since then."""
        rows = self.conn.execute(
            select(decision_t.c.request).where(
                decision_t.c.patient_id == patient_id, decision_t.c.at >= since
            )
        ).all()
        return [str((r.request or {}).get("setting", "")) for r in rows]
