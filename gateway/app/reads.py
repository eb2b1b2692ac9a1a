"""Reads that decide nothing, beside the service: FHIR read, vread and search, a patient's record
and REMS status, the read-only `$rems-etasu`. Each runs on a connection of its own in a worker
thread, sees committed data only and never waits behind (or holds up) the writer's batches."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Engine

from gateway.app.context import UnitContext
from gateway.app.units import dispense as dispense_unit
from gateway.app.units import fhir_dispense, fhir_records, identity
from gateway.app.units import labs as lab_units
from gateway.app.values import HookChecks, PatientNamed
from mappings.fhir.etasu import EtasuCheck, EtasuQuery, decision_response
from mappings.fhir.observation import lab_observation
from rems_core import status
from rems_core.audit import AuditEntry, ChainHead, verify
from rems_core.audit import Finding as AuditFinding
from rems_core.identity import Candidate
from rems_core.model import (
    AncResult,
    DispenseRequest,
    Identifier,
    LabResult,
    Patient,
    ResultStatus,
    decision_from_dict,
)
from rems_core.rulepack import RulePack
from rems_core.status import PatientRecord, RemsStatus
from rems_core.store.console_repo import DecisionFilter, MessageQuery
from rems_core.store.fhir_repo import (
    LAB_PREFIX,
    OBSERVATION,
    LabRow,
    ResourceQuery,
    StoredResource,
    with_meta,
)
from rems_core.store.message_repo import MessageFilter, StoredMessage
from rems_core.store.repo import Store
from rems_core.store.review_repo import ReviewFilter
from rems_core.store.subscription_repo import DueNotification
from rems_core.store.worklist_repo import TaskFilter

T = TypeVar("T")
RESPONSE = "QuestionnaireResponse"
MANY = 10_000  # a patient's responses: one a month, filtered here by status


class RemsReads:
    def __init__(self, engine: Engine, ctx: UnitContext) -> None:
        self.engine = engine
        self.ctx = ctx

    async def resource(
        self, resource_type: str, resource_id: str, version: int | None = None
    ) -> StoredResource | None:
        """A FHIR resource as stored: its current version, or the one asked for (a lab result
        shown as an Observation has one version)."""

        def read(store: Store) -> StoredResource | None:
            if resource_type == OBSERVATION and resource_id.startswith(LAB_PREFIX):
                row = store.lab_row(resource_id)
                return shown(row) if row is not None and version in (None, 1) else None
            if version is None:
                return store.current_resource(resource_type, resource_id)
            return store.resource_version(resource_type, resource_id, version)

        return await self._read(read)

    async def search_resources(
        self, query: ResourceQuery, patient: PatientNamed | None = None
    ) -> tuple[list[StoredResource], int]:
        """One page of the current resources that match, and how many match in all; ``patient``
        (an id and/or an identifier, ANDed) narrows the query to that patient."""

        def search(store: Store) -> tuple[list[StoredResource], int]:
            if patient is not None:
                ids = fhir_records.patient_ids(store, patient)
                found, total = store.search_resources(replace(query, patient_ids=ids))
            else:
                found, total = store.search_resources(query)
            return [shown(r) if isinstance(r, LabRow) else r for r in found], total

        return await self._read(search)

    async def patient_record(self, patient_id: str) -> PatientRecord | None:
        return await self._read(lambda store: _patient_record(store, patient_id))

    async def find_patient(self, identifiers: list[Identifier]) -> Patient | None:
        """The registry patient one of ``identifiers`` names."""
        return await self._read(lambda store: store.find_patient(identifiers))

    async def patient_by_identifier(self, identifier: Identifier) -> PatientRecord | None:
        def by_identifier(store: Store) -> PatientRecord | None:
            patient = store.find_patient([identifier])
            return _patient_record(store, patient.rems_id) if patient is not None else None

        return await self._read(by_identifier)

    async def rems_status(self, patient_id: str, at: datetime) -> RemsStatus | None:
        """The patient's REMS status at ``at``, by the pack of that date."""
        pack = self.ctx.pack_for(at)

        def of_patient(store: Store) -> RemsStatus | None:
            patient = store.patient(patient_id)
            if patient is None:
                return None
            return status.rems_status(pack, store.snapshot(patient), patient_id, at, self.ctx.tz)

        return await self._read(of_patient)

    async def check_etasu(self, query: EtasuQuery) -> EtasuCheck:
        """`$rems-etasu`: a stored decision, or the decision a dispense would get now (by the
        pack of its dispense date); records nothing. Raises UnknownPatient."""
        moment = query.request.dispense_date if query.request is not None else None
        pack = self.ctx.pack_for(moment) if moment is not None else None
        return await self._read(lambda store: fhir_dispense.etasu(self.ctx, store, query, pack))

    async def check_hook(
        self,
        identifiers: list[Identifier],
        requests: list[DispenseRequest],
        at: datetime,
        labs: list[LabResult] | None = None,
    ) -> HookChecks | None:
        """A CDS hook's patient and orders (docs/contracts.md §6): the REMS status now and each
        order checked exactly as `$rems-etasu` checks it; records nothing. With ``labs`` (the
        hook's prefetched results), in the same read: None when one of a registry patient's is not
        on file yet (as `labs_on_file` says), and nothing is checked — store them, then ask
        again."""
        pack = self.ctx.pack_for(at)
        packs = [self.ctx.pack_for(r.dispense_date) for r in requests]

        def checked(store: Store) -> HookChecks | None:
            patient = store.find_patient(identifiers)
            if (
                labs
                and patient is not None
                and not lab_units.on_file(self.ctx, store, patient, labs)
            ):
                return None
            # one read of the file serves the status and every order (each order's check looks
            # up only its own prescriber and pharmacy in it)
            snapshot = store.snapshot(
                patient, [r.prescriber_npi for r in requests], [r.pharmacy_npi for r in requests]
            )
            found = None
            if patient is not None:
                found = status.rems_status(pack, snapshot, patient.rems_id, at, self.ctx.tz)
            checks = [
                fhir_dispense.check_etasu(
                    self.ctx, store, identifiers, request, request_pack, snapshot
                )
                for request, request_pack in zip(requests, packs, strict=True)
            ]
            return HookChecks(patient.rems_id if patient else None, found, checks)

        return await self._read(checked)

    async def labs_on_file(self, identifiers: list[Identifier], results: list[LabResult]) -> bool:
        """Whether a hook's prefetched labs need no write: every REMS-relevant result is stored
        already, as it is, for the registry patient the identifiers name — or they name none (a
        hook's labs are the EHR's copies: kept for registry patients only)."""

        def on_file(store: Store) -> bool:
            patient = store.find_patient(identifiers)
            return patient is None or lab_units.on_file(self.ctx, store, patient, results)

        return await self._read(on_file)

    async def client_patient(self, owner: str, patient_id: str) -> PatientRecord | None:
        """A Patient the FHIR client ``owner`` stored as ``patient_id`` (§5): the registry
        patient it is linked to, else its own identifiers (an unlinked Patient)."""

        def linked(store: Store) -> PatientRecord | None:
            stored = store.current_resource("Patient", patient_id)
            if stored is None or stored.owner != owner:
                return None
            if stored.patient_id is not None:
                return _patient_record(store, stored.patient_id)
            held = [
                Identifier(i["system"], str(i["value"]))
                for i in stored.body.get("identifier", [])
                if i.get("system") and i.get("value")
            ]
            return PatientRecord("", tuple(held))

        return await self._read(linked)

    async def decision_for_request(self, request_id: str) -> dict[str, Any] | None:
        """The stored answer to a request id (the scenario runner's view of an RDE it sent)."""

        def read(store: Store) -> dict[str, Any] | None:
            found = store.decision_for_request(request_id)
            return found[1] if found else None

        return await self._read(read)

    async def ancs_received(self, identifiers: list[Identifier], at: datetime) -> list[AncResult]:
        """The patient's current ANCs stored from what arrived at ``at`` (the scenario runner's
        view of one step)."""

        def received(store: Store) -> list[AncResult]:
            patient = store.find_patient(identifiers)
            if patient is None:
                return []
            return [a for a in store.anc_results(patient.rems_id) if a.received == at]

        return await self._read(received)

    async def client_patients(self, identifier: Identifier) -> list[StoredResource]:
        """The current Patients clients stored that carry ``identifier``."""

        def carrying(store: Store) -> list[StoredResource]:
            ids = store.client_patients_with([identifier])
            found = (store.current_resource("Patient", i) for i in ids)
            return [stored for stored in found if stored is not None]

        return await self._read(carrying)

    async def review_items(self, wanted: ReviewFilter) -> tuple[list[dict[str, Any]], int]:
        """One page of the review queue, oldest first, and how many items match."""
        return await self._read(lambda store: store.review_items(wanted))

    async def review_item(self, item_id: str) -> dict[str, Any] | None:
        return await self._read(lambda store: store.review_item(item_id))

    async def review_counts(self) -> dict[tuple[str, str], int]:
        """Review items by kind and status."""
        return await self._read(lambda store: store.review_counts())

    async def tasks(self, wanted: TaskFilter) -> tuple[list[StoredResource], int]:
        """One page of the worklist's tasks as FHIR Tasks, newest first, and how many match."""

        def read(store: Store) -> tuple[list[StoredResource], int]:
            rows, total = store.tasks(wanted)
            found = (store.current_resource("Task", row["id"]) for row in rows)
            return [task for task in found if task is not None], total

        return await self._read(read)

    async def task_rows(self, wanted: TaskFilter) -> tuple[list[dict[str, Any]], int]:
        """The same page as the store keeps it (for `rems-gateway tasks`)."""
        return await self._read(lambda store: store.tasks(wanted))

    async def responses(
        self, patient_id: str | None, status: str | None, count: int, offset: int
    ) -> tuple[list[StoredResource], int]:
        """Current QuestionnaireResponses of a patient (or anyone's) in a status (`in-progress`:
        the monthly drafts waiting to be completed), filtered here: a patient has one a month."""

        def read(store: Store) -> tuple[list[StoredResource], int]:
            query = ResourceQuery(RESPONSE, [patient_id] if patient_id else None, count=MANY)
            found, _ = store.search_resources(query)
            matching = [r for r in found if status is None or r.body.get("status") == status]
            return matching[offset : offset + count], len(matching)

        return await self._read(read)

    async def decision_response(self, decision_id: str) -> dict[str, Any] | None:
        """A recorded decision as the GuidanceResponse that notifications name."""

        def read(store: Store) -> dict[str, Any] | None:
            found = store.decision_record(decision_id)
            if found is None:
                return None
            return decision_response(decision_from_dict(found[0]), found[1])

        return await self._read(read)

    # --- Subscriptions (docs/contracts.md §7) -----------------------------------------------

    async def subscription(self, subscription_id: str) -> dict[str, Any] | None:
        """A subscription's delivery state (its row)."""
        return await self._read(lambda store: store.subscription(subscription_id))

    async def subscriptions(self, status: str | None) -> list[StoredResource]:
        """The current Subscriptions, of one status or all, oldest first."""

        def read(store: Store) -> list[StoredResource]:
            ids = store.subscription_ids(status)
            found = (store.current_resource("Subscription", i) for i in ids)
            return [stored for stored in found if stored is not None]

        return await self._read(read)

    async def due_notifications(
        self, now: datetime, limit: int, busy: frozenset[str]
    ) -> list[DueNotification]:
        """The next notification of each subscription not ``busy``, due by ``now``."""
        return await self._read(lambda store: store.due_notifications(now, limit, busy))

    async def notification_counts(self) -> dict[str, int]:
        return await self._read(lambda store: store.notification_counts())

    async def lease(self, name: str) -> dict[str, Any] | None:
        """A lease row (e.g. the scheduler's): holder, acquired, expires, last_run."""
        return await self._read(lambda store: store.lease(name))

    # --- the operator console (docs/contracts.md §8) -------------------------------------------

    async def messages(self, wanted: MessageQuery) -> tuple[list[dict[str, Any]], int]:
        """One page of the stored HL7 messages (without their text), newest first."""
        return await self._read(lambda store: store.messages(wanted))

    async def message(self, message_id: int) -> dict[str, Any] | None:
        """A stored HL7 message with its raw text and its ACK."""
        return await self._read(lambda store: store.message_row(message_id))

    async def message_number(self, reference: str) -> int | None:
        """The stored message a review item names (``MSH-3|MSH-4#MSH-10``)."""
        sender, _, control_id = reference.rpartition("#")
        return await self._read(lambda store: store.message_number(sender, control_id))

    async def message_senders(self) -> list[str]:
        return await self._read(lambda store: store.message_senders())

    async def decisions(self, wanted: DecisionFilter) -> tuple[list[dict[str, Any]], int]:
        """One page of the dispense decisions, newest dispense date first."""
        return await self._read(lambda store: store.decisions(wanted))

    async def patients_with_value(self, value: str, system: str | None = None) -> list[str]:
        """REMS ids of the registry patients holding an identifier of this value."""
        return await self._read(lambda store: store.patients_with_value(value, system))

    async def patient_exists(self, patient_id: str) -> bool:
        return await self._read(lambda store: store.patient(patient_id) is not None)

    async def patient_view(self, patient_id: str, at: datetime) -> PatientView | None:
        """Everything the console shows of one patient, read in one snapshot: demographics,
        the REMS status at ``at``, the current ANCs, the PSFs and decisions, the open tasks."""
        pack = self.ctx.pack_for(at)

        def read(store: Store) -> PatientView | None:
            patient = store.patient(patient_id)
            record = _patient_record(store, patient_id)
            if patient is None or record is None:
                return None
            snapshot = store.snapshot(patient)
            decisions, _ = store.decisions(DecisionFilter(patient_id=patient_id, count=MANY))
            tasks, _ = store.tasks(TaskFilter(patient_id=patient_id, count=MANY))
            return PatientView(
                patient,
                record,
                status.rems_status(pack, snapshot, patient_id, at, self.ctx.tz),
                pack,
                sorted(snapshot.anc_results, key=lambda a: (a.drawn, a.result_id)),
                store.psf_rows(patient_id),
                decisions,
                tasks,
            )

        return await self._read(read)

    async def audit_state(self, checkpoint: ChainHead | None, last: int = 20) -> AuditState:
        """The chain verified end to end (against the checkpoint, if any) in one snapshot, its
        head and its newest records."""

        def read(store: Store) -> AuditState:
            head = store.chain_head()
            newest: deque[AuditEntry] = deque(maxlen=last)
            problem = verify(_kept(store.audit_records(), newest), head, checkpoint)
            return AuditState(problem, head, checkpoint, list(reversed(newest)))

        return await self._read(read)

    # --- the operator's toolkit: `explain`, `replay` ------------------------------------------

    async def stored_messages(self, wanted: MessageFilter) -> list[StoredMessage]:
        """HL7 v2 messages as received, oldest first (what `replay` processes again)."""
        return await self._read(lambda store: store.stored_messages(wanted))

    async def message_answer(self, sender: str, control_id: str) -> tuple[str, str] | None:
        """The content hash and the ACK of the message first stored with this sender and
        control id (a resend of it gets that ACK again)."""
        return await self._read(lambda store: store.message_by_control_id(sender, control_id))

    async def match_patients(self, candidates: list[Candidate]) -> tuple[Patient, ...]:
        """The registry patients identifier candidates name, as a message's unit of work would
        match them (one: that patient; none or two: held for review)."""
        return await self._read(lambda store: identity.match(store, candidates).patients)

    async def check_order(
        self, identifiers: list[Identifier], request: DispenseRequest
    ) -> EtasuCheck:
        """A pharmacy order checked as `$rems-etasu` checks it (an order naming no prescriber is
        the enrolling prescriber's, as the gateway takes it); records nothing. Raises
        OutOfScope when no rule pack covers its date."""
        pack = self.ctx.pack_for(request.dispense_date)

        def checked(store: Store) -> EtasuCheck:
            named = dispense_unit.with_enrolling_prescriber(store, identifiers, request)
            return fhir_dispense.check_etasu(self.ctx, store, identifiers, named, pack)

        return await self._read(checked)

    async def _read(self, work: Callable[[Store], T]) -> T:
        def on_read_connection() -> T:
            connection = self.engine.connect().execution_options(read_only=True)
            with connection as conn, conn.begin():
                return work(Store(conn))

        return await asyncio.to_thread(on_read_connection)


def shown(row: LabRow) -> StoredResource:
    """A lab result that did not come as a FHIR Observation, as the Observation of the patient's
    FHIR record it is (docs/contracts.md §5)."""
    specimen = None if row.specimen_key.startswith("drawn:") else row.specimen_key
    result = LabResult(row.code, row.value, row.unit, row.drawn, ResultStatus(row.status), specimen)
    resource_id = f"{LAB_PREFIX}{row.row_id}"
    body = with_meta(
        lab_observation(result, row.patient_id, row.source, row.received),
        resource_id,
        1,
        row.received,
    )
    return StoredResource(OBSERVATION, resource_id, 1, row.received, "", body, None, row.patient_id)


@dataclass(frozen=True)
class PatientView:
    patient: Patient
    record: PatientRecord
    status: RemsStatus
    pack: RulePack
    ancs: list[AncResult]
    psfs: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    tasks: list[dict[str, Any]]


@dataclass(frozen=True)
class AuditState:
    problem: AuditFinding | None  # the first bad record; None: the chain verifies
    head: ChainHead
    checkpoint: ChainHead | None
    newest: list[AuditEntry]  # newest first


def _kept(records: Iterable[AuditEntry], kept: deque[AuditEntry]) -> Iterator[AuditEntry]:
    for record in records:
        kept.append(record)
        yield record


def _patient_record(store: Store, patient_id: str) -> PatientRecord | None:
    patient = store.patient(patient_id)
    person = store.patient_demographics(patient_id) if patient is not None else None
    if patient is None or person is None:
        return None
    return PatientRecord(
        patient.rems_id,
        patient.identifiers,
        person.family_name,
        person.given_name,
        person.birth_date,
        person.sex,
    )
