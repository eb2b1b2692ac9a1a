"""The worklist's tasks over FHIR (docs/contracts.md §7): read, vread and search. The gateway opens
and closes them as the patient's file changes; a client reads them and does the work (completes
the draft, signs, draws the labs), it never updates a Task itself."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from gateway.fhir.auth import Principal, requires
from gateway.fhir.http import FhirError, FhirResponse, check_format
from gateway.fhir.reads import add_reads
from gateway.fhir.resources import reads_of, searchset
from gateway.fhir.search import PAGING, page, search_parameters
from mappings.fhir.worklist import TASK_SYSTEM
from rems_core.store.worklist_repo import TaskFilter
from rems_core.worklist import TaskKind

router = APIRouter(tags=["Task"])
TYPE = "Task"
STATUSES = ("requested", "completed", "cancelled")
SEARCH = ("patient", "owner", "status", "code", "focus")


@router.get("/Task")
async def search_tasks(
    request: Request,
    _: Annotated[Principal, requires(TYPE, "search")],
    patient: str | None = None,
    owner: str | None = None,
    status: str | None = None,
    code: str | None = None,
    focus: str | None = None,
    count: Annotated[int | None, Query(alias="_count")] = None,
    offset: Annotated[int | None, Query(alias="_offset")] = None,
) -> FhirResponse:
    """By `patient` (an id or `Patient/{id}`), `owner` (`Practitioner/{NPI}` or the NPI),
    `status` (requested, completed, cancelled), `code` (a task kind, optionally
    `urn:rems-gateway:task|`), `focus` (`QuestionnaireResponse/{id}`), `_count`, `_offset`;
    newest first."""
    check_format(request)
    used = search_parameters(request, (*SEARCH, *PAGING))
    limit, skip = page(count, offset)
    wanted = TaskFilter(
        patient_id=patient.removeprefix("Patient/") if patient else None,
        owner_npi=owner.removeprefix("Practitioner/") if owner else None,
        status=_status(status),
        kind=_kind(code),
        focus=focus,
        count=limit,
        offset=skip,
    )
    found, total = await reads_of(request).tasks(wanted)
    return searchset(request, used, found, total, skip, limit)


def _status(status: str | None) -> str | None:
    if status is not None and status not in STATUSES:
        raise FhirError(400, "value", f"status is one of {', '.join(STATUSES)}", ("status",))
    return status


def _kind(code: str | None) -> str | None:
    if code is None:
        return None
    kind = code.removeprefix(f"{TASK_SYSTEM}|")
    if kind not in {k.value for k in TaskKind}:
        known = ", ".join(k.value for k in TaskKind)
        raise FhirError(400, "value", f"code is a task kind of {TASK_SYSTEM}: {known}", ("code",))
    return kind


add_reads(router, TYPE)
