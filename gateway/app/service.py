"""The application service: the one place every channel calls.

Each operation is one unit of work for the single writer (see ``writer.py``): it reads the
patient's file, asks the pure engine, stores the outcome, and answers after the commit.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TypeVar

from gateway import (
    audit_log,
    dispense_intake,
    fhir_dispense,
    fhir_intake,
    fhir_psf,
    lab_intake,
    patient_status,
    psf_intake,
    registry_load,
)
from gateway.dispense_intake import RequestConflict as RequestConflict  # re-exported
from gateway.fhir_intake import LabsRecorded, LabSubmission, PatientNamed
from gateway.values import LabOutcome, ReceivedMessage, Source
from gateway.writer import Writer
from mappings.fhir.etasu import EtasuQuery
from rems_core import monitoring
from rems_core.model import (
    AncResult,
    Decision,
    DispenseRequest,
    Finding,
    Identifier,
    LabResult,
    Patient,
    PatientStatusForm,
    PsfOutcome,
)
from rems_core.registry import RegistryConflict, RegistryDocument
from rems_core.rulepack import AUTO, DEFAULT_PACK, PackLibrary, RulePack
from rems_core.store.fhir_repo import ResourceQuery, StoredResource
from rems_core.store.repo import Store

T = TypeVar("T")

SCHEDULER = Source("scheduler", "scheduler")


class RandomIds:
    """Ids and RDA numbers: unique and not guessable. The operating system's random bytes are
    read a page at a time (one system call per ~500 ids, not one per id)."""

    def __init__(self) -> None:
        self._pool = b""
        self._taken = 0
        self._lock = threading.Lock()

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{self._random_hex(8)}"

    def rda_number(self) -> str:
        return "RDA-" + self._random_hex(6).upper()

    def _random_hex(self, size: int) -> str:
        with self._lock:
            if self._taken + size > len(self._pool):
                self._pool, self._taken = os.urandom(4096), 0
            start, self._taken = self._taken, self._taken + size
            return self._pool[start : self._taken].hex()


@dataclass(frozen=True)
class ServiceConfig:
    rules: str = DEFAULT_PACK  # a pack id, or "auto"
    tz: tzinfo = UTC


class RemsService:
    def __init__(
        self,
        writer: Writer,
        packs: PackLibrary | None = None,
        config: ServiceConfig | None = None,
        ids: RandomIds | None = None,
    ) -> None:
        self.writer = writer
        self.packs = packs or PackLibrary()
        self.config = config or ServiceConfig()
        self.ids = ids or RandomIds()
        self.decision_observers: list[Callable[[Decision], None]] = []  # e.g. metrics

    @property
    def tz(self) -> tzinfo:
        return self.config.tz

    def pack_for(self, moment: datetime, rules: str | None = None) -> RulePack:
        """The pack for an event's clinical time (raises OutOfScope before the program)."""
        return self.packs.for_date(
            rules or self.config.rules, monitoring.local_date(moment, self.tz)
        )

    def lab_pack(self) -> RulePack:
        # A lab's category and thresholds are the same in every pack (rems-rules.md §0).
        choice = self.config.rules
        return self.packs.get(DEFAULT_PACK if choice == AUTO else choice)

    # --- reads: outside the writer, on a connection of their own ------------------------------

    async def resource(
        self, resource_type: str, resource_id: str, version: int | None = None
    ) -> StoredResource | None:
        """A FHIR resource as stored: its current version, or the one asked for."""
        if version is None:
            return await self._read(lambda s: s.current_resource(resource_type, resource_id))
        return await self._read(lambda s: s.resource_version(resource_type, resource_id, version))

    async def search_resources(
        self, query: ResourceQuery, patient: PatientNamed | None = None
    ) -> tuple[list[StoredResource], int]:
        """One page of the current resources that match, and how many match in all; ``patient``
        (an id and/or an identifier, ANDed) narrows the query to that patient."""

        def search(store: Store) -> tuple[list[StoredResource], int]:
            if patient is None:
                return store.search_resources(query)
            ids = fhir_intake.patient_ids(store, patient)
            return store.search_resources(replace(query, patient_ids=ids))

        return await self._read(search)

    async def patient_record(self, patient_id: str) -> patient_status.PatientRecord | None:
        return await self._read(lambda store: patient_status.patient_record(store, patient_id))

    async def find_patient(self, identifiers: list[Identifier]) -> Patient | None:
        """The registry patient one of ``identifiers`` names."""
        return await self._read(lambda store: store.find_patient(identifiers))

    async def patient_by_identifier(
        self, identifier: Identifier
    ) -> patient_status.PatientRecord | None:
        return await self._read(
            lambda store: patient_status.patient_by_identifier(store, identifier)
        )

    async def rems_status(self, patient_id: str, at: datetime) -> patient_status.RemsStatus | None:
        """The patient's REMS status at ``at``, by the pack of that date."""
        pack = self.pack_for(at)
        return await self._read(
            lambda store: patient_status.rems_status(pack, store, patient_id, at, self.tz)
        )

    async def check_etasu(self, query: EtasuQuery) -> fhir_dispense.EtasuCheck:
        """`$rems-etasu`: a stored decision, or the decision a dispense would get now (by the
        pack of its dispense date); records nothing. Raises UnknownPatient."""
        moment = query.request.dispense_date if query.request is not None else None
        pack = self.pack_for(moment) if moment is not None else None
        return await self._read(lambda store: fhir_dispense.etasu(self, store, query, pack))

    async def ancs_received(self, identifiers: list[Identifier], at: datetime) -> list[AncResult]:
        """The patient's current ANCs stored from what arrived at ``at`` (the scenario runner's
        view of one step)."""

        def received(store: Store) -> list[AncResult]:
            patient = store.find_patient(identifiers)
            if patient is None:
                return []
            return [a for a in store.anc_results(patient.rems_id) if a.received == at]

        return await self._read(received)

    async def _read(self, work: Callable[[Store], T]) -> T:
        """A read outside the writer, on its own connection: it sees committed data only and
        never waits behind (or holds up) the writer's batches."""

        def on_read_connection() -> T:
            connection = self.writer.engine.connect().execution_options(read_only=True)
            with connection as conn, conn.begin():
                return work(Store(conn))

        return await asyncio.to_thread(on_read_connection)

    # --- registry ------------------------------------------------------------------------------

    async def load_registry(self, doc: RegistryDocument, source: Source) -> dict[str, str]:
        problems = doc.conflicts()
        if problems:
            raise RegistryConflict("; ".join(problems))
        return await self.writer.run(lambda store: registry_load.load(self, store, doc, source))

    # --- lab results ------------------------------------------------------------------------------

    async def ingest_labs(
        self,
        identifiers: list[Identifier],
        results: list[LabResult],
        source: Source,
        received: datetime,
    ) -> LabOutcome:
        return await self.writer.run(
            lambda store: lab_intake.ingest(self, store, identifiers, results, source, received)
        )

    async def record_labs(
        self, submissions: list[LabSubmission], source: Source, received: datetime
    ) -> LabsRecorded:
        """FHIR Observations: each stored as a resource version, with its lab results."""
        return await self.writer.run(
            lambda store: fhir_intake.record_labs(self, store, submissions, source, received)
        )

    async def record_medication_request(
        self, submission: fhir_dispense.DispenseSubmission, source: Source
    ) -> fhir_dispense.DispenseRecorded:
        """A FHIR MedicationRequest: decided as ``decide_dispense`` decides, and
        stored with its decision, in one unit of work."""
        pack = self.pack_for(submission.request.dispense_date)
        done = await self.writer.run(
            lambda store: fhir_dispense.record_medication_request(
                self, store, submission, source, pack
            )
        )
        if done.decision is not None and done.recorded and not done.recorded.unchanged:
            for observe in self.decision_observers:
                observe(done.decision)
        return done

    async def record_transaction(
        self,
        submissions: list[LabSubmission],
        dependents: Callable[[list[fhir_intake.Recorded]], list[LabSubmission]],
        source: Source,
        received: datetime,
    ) -> LabsRecorded:
        """A FHIR transaction Bundle in one unit of work: all of it is stored, or nothing."""
        return await self.writer.run(
            lambda store: fhir_intake.record_transaction(
                self, store, submissions, dependents, source, received
            )
        )

    # --- PSF ----------------------------------------------------------------------------------

    async def submit_psf(
        self, identifiers: list[Identifier], form: PatientStatusForm, source: Source
    ) -> PsfOutcome:
        pack = self.pack_for(form.submitted_at)

        def unit(store: Store) -> PsfOutcome:
            outcome = psf_intake.submit(self, store, identifiers, form, source, pack)
            store.append_audit(audit_log.psf(source, form, outcome))
            return outcome

        return await self.writer.run(unit)

    async def sign_psf(
        self,
        identifiers: list[Identifier],
        signer: str,
        at: datetime,
        source: Source,
        psf_id: str | None = None,
    ) -> PsfOutcome:
        pack = self.pack_for(at)

        def unit(store: Store) -> PsfOutcome:
            outcome = psf_intake.sign(self, store, identifiers, signer, at, pack, psf_id)
            store.append_audit(audit_log.signature(source, signer, psf_id, at, outcome))
            return outcome

        return await self.writer.run(unit)

    async def submit_psf_resource(
        self, submission: fhir_psf.PsfSubmission, source: Source
    ) -> fhir_psf.PsfRecorded:
        """A QuestionnaireResponse: its PSF judged as ``submit_psf`` does, and the response
        stored with the outcome, in one unit of work (the same response again is not re-judged)."""
        form = submission.form
        pack = self.pack_for(form.submitted_at)

        def unit(store: Store) -> fhir_psf.PsfRecorded:
            again = fhir_psf.resent(store, submission)
            if again is not None:
                return again
            identifiers = fhir_psf.subject_identifiers(store, submission)
            outcome = psf_intake.submit(self, store, identifiers, form, source, pack)
            store.append_audit(audit_log.psf(source, form, outcome))
            return fhir_psf.keep(self, store, submission, outcome)

        return await self.writer.run(unit)

    async def sign_psf_resource(
        self, request: fhir_psf.SignRequest, source: Source
    ) -> fhir_psf.PsfRecorded:
        """A prescriber signs the PSF of a QuestionnaireResponse, as ``sign_psf`` does; the
        response's next version carries the new outcome."""
        pack = self.pack_for(request.at)

        def unit(store: Store) -> fhir_psf.PsfRecorded:
            form = fhir_psf.pending(store, request)
            identifiers = fhir_psf.patient_identifiers(store, request.patient_id)
            signer, at = request.signer, request.at
            outcome = psf_intake.sign(self, store, identifiers, signer, at, pack, form.psf_id)
            store.append_audit(audit_log.signature(source, signer, form.psf_id, at, outcome))
            return fhir_psf.keep_signature(self, store, request, outcome)

        return await self.writer.run(unit)

    # --- dispense -----------------------------------------------------------------------------

    async def decide_dispense(
        self, identifiers: list[Identifier], request: DispenseRequest, source: Source
    ) -> Decision:
        pack = self.pack_for(request.dispense_date)
        decision = await self.writer.run(
            lambda store: dispense_intake.decide_dispense(
                self, store, identifiers, request, source, pack
            )
        )
        for observe in self.decision_observers:
            observe(decision)
        return decision

    # --- HL7 v2 messages ------------------------------------------------------------------

    async def receive_message(
        self,
        message: ReceivedMessage,
        identifiers: list[Identifier],
        results: list[LabResult],
        answer: Callable[[LabOutcome | None, str], str],
        source: Source,
    ) -> str:
        """Store a message with its results and its ACK in one unit of work; the ACK (built by
        ``answer`` from the outcome and the disposition) leaves only after the commit. A repeated
        control id with the same content gets the stored ACK; with other content, a conflict."""
        return await self.writer.run(
            lambda store: self._receive(store, message, identifiers, results, answer, source)
        )

    def _receive(
        self,
        store: Store,
        message: ReceivedMessage,
        identifiers: list[Identifier],
        results: list[LabResult],
        answer: Callable[[LabOutcome | None, str], str],
        source: Source,
    ) -> str:
        earlier = store.message_by_control_id(message.sender, message.control_id)
        if earlier is not None and earlier[0] == message.content_hash:
            return earlier[1]  # the same message again: not processed twice
        outcome = None
        if earlier is not None:
            disposition = "conflict"  # held for review
        elif results:
            outcome = lab_intake.ingest(self, store, identifiers, results, source, message.received)
            disposition = "accepted" if outcome.matched else "unmatched"
        else:
            disposition = "no_results"
        ack = answer(outcome, disposition)
        kept = message.received + timedelta(days=7) if disposition == "no_results" else None
        store.add_message(
            {
                "sender": message.sender,
                "control_id": message.control_id,
                "content_hash": message.content_hash,
                "message_type": message.message_type,
                "received": message.received,
                "raw": message.raw,
                "ack": ack,
                "disposition": disposition,
                "patient_id": outcome.patient if outcome else None,
                "purge_after": kept,
            }
        )
        return ack

    # --- scheduled work (§8) ------------------------------------------------------------------

    async def run_scheduled(
        self,
        until: datetime,
        patient_ids: list[str] | None = None,
        source: Source = SCHEDULER,
    ) -> dict[str, tuple[Finding, ...]]:
        from gateway.schedule import monitoring_alerts

        return await self.writer.run(
            lambda store: monitoring_alerts(self, store, until, patient_ids, source)
        )
