"""The application service: the one place every channel sends what changes a patient's file.

Each operation is one unit of work for the single writer (see ``writer.py``): it reads the
patient's file, asks the pure engine, stores the outcome, and answers after the commit. The units
themselves (``units/``) get the service's ``UnitContext``, never the service.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import datetime, timedelta
from typing import Any

from gateway.app import audit_records
from gateway.app.context import UnitContext
from gateway.app.errors import RequestConflict
from gateway.app.units import (
    cds,
    fhir_bundles,
    fhir_dispense,
    fhir_patients,
    fhir_psf,
    fhir_records,
    labs,
    lookup,
    messages,
    notifications,
    registry,
    replay,
    review,
    scheduled,
    subscriptions,
    worklist,
)
from gateway.app.units import dispense as dispense_unit
from gateway.app.units import psf as psf_unit
from gateway.app.units import rda as rda_unit
from gateway.app.values import (
    BundleItem,
    BundleRecorded,
    CardFeedback,
    DispenseRecorded,
    DispenseSubmission,
    FeedbackRecorded,
    LabOutcome,
    LabsRecorded,
    LabSubmission,
    MedicationDispenseRecorded,
    MedicationDispenseSubmission,
    MedicationRequestEnd,
    MedicationRequestEnded,
    OrderEnded,
    OrdersDone,
    OrderWork,
    PatientRecorded,
    PatientSubmission,
    PsfRecorded,
    PsfSubmission,
    ReceivedMessage,
    Recorded,
    Replayed,
    SignRequest,
    Source,
    SubscriptionSubmission,
)
from gateway.app.writer import Writer
from mappings.hl7v2.adt import AdtEvent
from rems_core.identity import Candidate, Rule, resolved
from rems_core.model import (
    Decision,
    DispenseRequest,
    Finding,
    Identifier,
    LabResult,
    PatientStatusForm,
    PsfOutcome,
)
from rems_core.parties import Party
from rems_core.rda import DispenseFiled, DispenseRecord, OrderEnd
from rems_core.registry import RegistryConflict, RegistryDocument
from rems_core.rulepack import OutOfScope
from rems_core.shipping import ShipCheck, ShipmentQuery
from rems_core.store.message_repo import StoredMessage
from rems_core.store.parties_repo import PartyQuery
from rems_core.store.repo import Store

log = logging.getLogger("rems_gateway.service")
SCHEDULER = Source("scheduler", "scheduler")
SCHEDULER_LEASE = "scheduled-work"  # the lease row of the periodic work (one per cluster)
#: Patients per unit of scheduled work: a lab result or a decision waits behind one such unit at
#: most (about a second with years of history each), not behind the whole registry.
SCHEDULED_PATIENTS_PER_UNIT = 50
REQUEST_ID_CONFLICT = "REQUEST_ID_CONFLICT"


class RemsService:
    """Writes: every operation that reads a patient's file and changes it, as one unit of work
    for the single writer. Reads that decide nothing are ``RemsReads`` (reads.py)."""

    def __init__(self, writer: Writer, ctx: UnitContext | None = None) -> None:
        self.writer = writer
        self.ctx = ctx or UnitContext()
        self.decision_observers: list[Callable[[Decision], None]] = []  # e.g. metrics
        self._cards = _CardsToKeep()

    # --- registry ------------------------------------------------------------------------------

    async def load_registry(self, doc: RegistryDocument, source: Source) -> dict[str, str]:
        problems = doc.conflicts()
        if problems:
            raise RegistryConflict("; ".join(problems))
        return await self.writer.run(lambda store: registry.load(self.ctx, store, doc, source))

    # --- certification lookup and shipment check (docs/rules.md §10) ---------------------------

    async def look_up(self, query: PartyQuery, source: Source) -> tuple[list[Party], int]:
        """Registry parties by id or search, one page and the total; audited (kind ``lookup``)
        with who asked: one small unit of work, so it waits for one group commit."""
        return await self.writer.run(lambda store: lookup.find(self.ctx, store, query, source))

    async def check_shipment(
        self, query: ShipmentQuery, source: Source
    ) -> tuple[ShipCheck, list[str]]:
        """May the partner ship clozapine to the pharmacy on the day (by the pack of that day;
        raises OutOfScope before the program); audited (kind ``ship_check``). With the check,
        the resources of the partner and pharmacy found."""
        pack = self.ctx.packs.for_date(self.ctx.rules, query.day)
        return await self.writer.run(
            lambda store: lookup.ship_check(self.ctx, store, query, pack, source)
        )

    # --- lab results ------------------------------------------------------------------------------

    async def ingest_labs(
        self,
        patient: Sequence[Identifier | Candidate],
        results: list[LabResult],
        source: Source,
        received: datetime,
    ) -> LabOutcome:
        """Results of the patient named by identifiers (with their systems) or candidates."""
        candidates = [
            c if isinstance(c, Candidate) else Candidate(c.value, "subject", Rule.FHIR, c.system)
            for c in patient
        ]
        return await self.writer.run(
            lambda store: labs.ingest(self.ctx, store, candidates, results, source, received)
        )

    async def record_labs(
        self, submissions: list[LabSubmission], source: Source, received: datetime
    ) -> LabsRecorded:
        """FHIR Observations: each stored as a resource version, with its lab results."""
        return await self.writer.run(
            lambda store: fhir_records.record_labs(self.ctx, store, submissions, source, received)
        )

    async def record_medication_request(
        self, submission: DispenseSubmission, source: Source
    ) -> DispenseRecorded:
        """A FHIR MedicationRequest: decided as ``decide_dispense`` decides, and
        stored with its decision, in one unit of work."""
        pack = self.ctx.pack_for(submission.request.dispense_date)
        done = await self.writer.run(
            lambda store: fhir_dispense.record_medication_request(
                self.ctx, store, submission, source, pack
            )
        )
        if done.decision is not None and done.recorded and not done.recorded.unchanged:
            for observe in self.decision_observers:
                observe(done.decision)
        return done

    async def record_patient(
        self, submission: PatientSubmission, source: Source, received: datetime
    ) -> PatientRecorded:
        """A client's FHIR Patient: stored with its id, linked by its identifiers to a registry
        patient, and the results held for it filed (raises ClientIdTaken)."""
        return await self.writer.run(
            lambda store: fhir_patients.record_patient(
                self.ctx, store, submission, source, received
            )
        )

    async def record_bundle(
        self, items: Sequence[BundleItem], source: Source, received: datetime, atomic: bool
    ) -> BundleRecorded:
        """A Bundle's entries in one unit of work: a transaction all or nothing (BundleRefused),
        a batch or collection entry by entry."""
        return await self.writer.run(
            lambda store: fhir_bundles.record_bundle(
                self.ctx, store, items, source, received, atomic
            )
        )

    # --- PSF ----------------------------------------------------------------------------------

    async def submit_psf(
        self, identifiers: list[Identifier], form: PatientStatusForm, source: Source
    ) -> PsfOutcome:
        pack = self.ctx.pack_for(form.submitted_at)

        def unit(store: Store) -> PsfOutcome:
            outcome = psf_unit.submit(self.ctx, store, identifiers, form, source, pack)
            store.append_audit(audit_records.psf(self.ctx.now(), source, form, outcome))
            self._refresh(store, outcome.patient, form.submitted_at, source)
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
        pack = self.ctx.pack_for(at)

        def unit(store: Store) -> PsfOutcome:
            outcome = psf_unit.sign(self.ctx, store, identifiers, signer, at, pack, psf_id)
            store.append_audit(
                audit_records.signature(self.ctx.now(), source, signer, psf_id, at, outcome)
            )
            self._refresh(store, outcome.patient, at, source)
            return outcome

        return await self.writer.run(unit)

    async def submit_psf_resource(self, submission: PsfSubmission, source: Source) -> PsfRecorded:
        """A QuestionnaireResponse: its PSF judged as ``submit_psf`` does, and the response
        stored with the outcome, in one unit of work (the same response again is not re-judged)."""
        form = submission.form
        pack = self.ctx.pack_for(form.submitted_at)

        def unit(store: Store) -> PsfRecorded:
            again = fhir_psf.resent(store, submission)
            if again is not None:
                return again
            draft_id = fhir_psf.open_draft(store, submission)
            identifiers = fhir_psf.subject_identifiers(store, submission)
            outcome = psf_unit.submit(self.ctx, store, identifiers, form, source, pack)
            store.append_audit(audit_records.psf(self.ctx.now(), source, form, outcome))
            kept = fhir_psf.keep(self.ctx, store, submission, outcome)
            fhir_psf.draft_done(store, draft_id, outcome, form.submitted_at)
            self._refresh(store, outcome.patient, form.submitted_at, source)
            return kept

        return await self.writer.run(unit)

    async def sign_psf_resource(self, request: SignRequest, source: Source) -> PsfRecorded:
        """A prescriber signs the PSF of a QuestionnaireResponse, as ``sign_psf`` does; the
        response's next version carries the new outcome."""
        pack = self.ctx.pack_for(request.at)

        def unit(store: Store) -> PsfRecorded:
            form = fhir_psf.pending(store, request)
            identifiers = fhir_psf.patient_identifiers(store, request.patient_id)
            signer, at = request.signer, request.at
            outcome = psf_unit.sign(self.ctx, store, identifiers, signer, at, pack, form.psf_id)
            store.append_audit(
                audit_records.signature(self.ctx.now(), source, signer, form.psf_id, at, outcome)
            )
            kept = fhir_psf.keep_signature(self.ctx, store, request, outcome)
            self._refresh(store, outcome.patient, at, source)
            return kept

        return await self.writer.run(unit)

    def _refresh(self, store: Store, patient_id: str | None, at: datetime, source: Source) -> None:
        """The patient's worklist after a change of their PSFs."""
        if patient_id is not None:
            worklist.refresh(self.ctx, store, patient_id, at, source)

    # --- dispense -----------------------------------------------------------------------------

    async def decide_dispense(
        self, identifiers: list[Identifier], request: DispenseRequest, source: Source
    ) -> Decision:
        pack = self.ctx.pack_for(request.dispense_date)
        decision = await self.writer.run(
            lambda store: dispense_unit.decide_dispense(
                self.ctx, store, identifiers, request, source, pack
            )
        )
        for observe in self.decision_observers:
            observe(decision)
        return decision

    # --- the RDA's life (docs/rules.md §6.4) ------------------------------------------------

    async def end_order(self, end: OrderEnd, source: Source) -> OrderEnded:
        """An order cancelled or discontinued (HL7 ORC-1 `CA`/`DC`): the RDA of the decision
        whose request id is ``end.request_id`` is voided; an order never decided is answered
        with ORDER_NOT_FOUND. The same end again answers the same."""
        return await self.writer.run(lambda store: rda_unit.end_order(self.ctx, store, end, source))

    async def record_dispense(self, record: DispenseRecord, source: Source) -> DispenseFiled:
        """A dispense (HL7 RDS^O13) against the RDA it names (by number, else by its order's
        request id): recorded, refused with the RDA_* reasons, recorded with
        DISPENSE_WITHOUT_RDA when no RDA is known, or ignored when it is not clozapine. The
        same record again is answered from the store."""
        return await self.writer.run(
            lambda store: rda_unit.record_dispense(self.ctx, store, record, source)
        )

    async def record_medication_dispense(
        self, submission: MedicationDispenseSubmission, source: Source
    ) -> MedicationDispenseRecorded:
        """A FHIR MedicationDispense: filed as ``record_dispense`` files it, and stored with
        what became of it, in one unit of work."""
        return await self.writer.run(
            lambda store: fhir_dispense.record_medication_dispense(
                self.ctx, store, submission, source
            )
        )

    async def end_medication_request(
        self, end: MedicationRequestEnd, source: Source
    ) -> MedicationRequestEnded:
        """A MedicationRequest updated to `cancelled`/`stopped`: its next version (keeping the
        original's decision) and its RDA voided, in one unit of work (raises UnknownResource,
        RequestConflict)."""
        return await self.writer.run(
            lambda store: fhir_dispense.end_medication_request(self.ctx, store, end, source)
        )

    def _decide_order(
        self, store: Store, identifiers: list[Identifier], request: DispenseRequest, source: Source
    ) -> Decision | Finding:
        """One order's decision, or why none was made: its request id was used for another
        request (REQUEST_ID_CONFLICT), or no rule pack covers its date."""
        request = dispense_unit.with_enrolling_prescriber(store, identifiers, request)
        try:
            pack = self.ctx.pack_for(request.dispense_date)
            return dispense_unit.decide_dispense(
                self.ctx, store, identifiers, request, source, pack
            )
        except RequestConflict as exc:
            return Finding(REQUEST_ID_CONFLICT, str(exc))
        except OutOfScope as exc:
            return Finding(OutOfScope.code, str(exc))

    # --- FHIR Subscriptions and their notifications (docs/contracts.md §7) ---------------------

    async def record_subscription(
        self, submission: SubscriptionSubmission, source: Source, received: datetime
    ) -> Recorded:
        """A Subscription created or updated, with its delivery state and, when it (re)starts,
        its handshake queued (raises ClientIdTaken, VersionConflict)."""
        return await self.writer.run(
            lambda store: subscriptions.record_subscription(
                self.ctx, store, submission, source, received
            )
        )

    async def notification_delivered(self, notification_id: int, at: datetime) -> None:
        await self.writer.run(
            lambda store: notifications.delivered(self.ctx, store, notification_id, at)
        )

    async def notification_failed(
        self, notification_id: int, error: str, retry_at: datetime | None
    ) -> None:
        """An attempt failed: tried again at ``retry_at``, or (None) dead-lettered."""
        await self.writer.run(
            lambda store: notifications.failed(self.ctx, store, notification_id, error, retry_at)
        )

    # --- HL7 v2 messages ------------------------------------------------------------------

    async def receive_orders(
        self,
        message: ReceivedMessage,
        candidates: list[Candidate],
        orders: OrderWork,
        answer: Callable[[OrdersDone, str], str],
        source: Source,
    ) -> str:
        """A pharmacy order message (RDE, OMP): each order decided as ``decide_dispense`` does
        (an order naming no prescriber: the patient's enrolling prescriber), each order's end
        (ORC-1 CA/DC) taken as ``end_order`` takes it, and the message stored with its answer
        (built by ``answer`` from what was done and the disposition) in one unit of work; a
        resend gets the stored answer, as ``receive_message``'s does."""
        identifiers = resolved(candidates)
        done = OrdersDone([], [])

        def process(store: Store) -> None:
            done.decided.extend(
                self._decide_order(store, identifiers, r, source) for r in orders.requests
            )
            done.ended.extend(rda_unit.end_order(self.ctx, store, e, source) for e in orders.ends)

        stored = await self._receive_pharmacy(message, candidates, done, process, answer, source)
        for decision in done.decided:
            for observe in self.decision_observers if isinstance(decision, Decision) else ():
                observe(decision)
        return stored

    async def receive_dispense(
        self,
        message: ReceivedMessage,
        candidates: list[Candidate],
        record: DispenseRecord,
        answer: Callable[[OrdersDone, str], str],
        source: Source,
    ) -> str:
        """A dispense message (RDS^O13): filed as ``record_dispense`` files it, and the message
        stored with its answer in one unit of work; a resend gets the stored answer."""
        done = OrdersDone([], [])

        def process(store: Store) -> None:
            done.filed.append(rda_unit.record_dispense(self.ctx, store, record, source))

        return await self._receive_pharmacy(message, candidates, done, process, answer, source)

    async def _receive_pharmacy(
        self,
        message: ReceivedMessage,
        candidates: list[Candidate],
        done: OrdersDone,
        process: Callable[[Store], None],
        answer: Callable[[OrdersDone, str], str],
        source: Source,
    ) -> str:
        def unit(store: Store) -> str:
            done.clear()  # the writer may run a unit again

            def work() -> tuple[LabOutcome | None, str]:
                process(store)
                return None, "accepted"

            return messages.receive_processed(
                self.ctx,
                store,
                message,
                candidates,
                lambda _outcome, disposition: answer(done, disposition),
                source,
                work,
            )

        return await self.writer.run(unit)

    async def receive_message(
        self,
        message: ReceivedMessage,
        candidates: list[Candidate],
        results: list[LabResult],
        answer: Callable[[LabOutcome | None, str], str],
        source: Source,
    ) -> str:
        """Store a message with its results and its ACK in one unit of work; the ACK (built by
        ``answer`` from the outcome and the disposition) leaves only after the commit. A repeated
        control id with the same content gets the stored ACK; with other content, a conflict."""
        return await self.writer.run(
            lambda store: messages.receive(
                self.ctx, store, message, candidates, results, answer, source
            )
        )

    async def receive_adt(
        self,
        message: ReceivedMessage,
        event: AdtEvent,
        answer: Callable[[LabOutcome | None, str], str],
        source: Source,
    ) -> str:
        """An ADT message, as ``receive_message``: identifiers added or merged, and the ACK."""
        return await self.writer.run(
            lambda store: messages.receive_adt(self.ctx, store, message, event, answer, source)
        )

    async def replay_message(
        self,
        stored: StoredMessage,
        candidates: list[Candidate],
        results: list[LabResult],
        source: Source,
    ) -> Replayed:
        """A stored ORU processed again (`Hl7Intake.replay_stored_messages` reads it anew under
        the current configuration): its results filed with their original arrival time to the
        patient today's registry names (a result on file already is not stored again), the
        review items of the message closed when it now matches; nothing held twice."""
        return await self.writer.run(
            lambda store: replay.replay_lab_message(
                self.ctx, store, stored, candidates, results, source
            )
        )

    # --- the review queue -----------------------------------------------------------------

    async def link_review(
        self,
        item_id: str,
        patient_id: str,
        identifier: Identifier | None,
        source: Source,
        at: datetime,
    ) -> review.Linked:
        """File a held item to a registry patient (and what else waited for its identifier)."""
        return await self.writer.run(
            lambda store: review.link(self.ctx, store, item_id, patient_id, identifier, source, at)
        )

    async def discard_review(self, item_id: str, reason: str, source: Source, at: datetime) -> None:
        await self.writer.run(
            lambda store: review.discard(self.ctx, store, item_id, reason, source, at)
        )

    # --- the operator console (docs/contracts.md §8) ---------------------------------------------

    async def record_access(self, source: Source, page: str, patient_id: str | None) -> None:
        """An operator viewed a patient's data (a patient, a message, a review item): one audit
        record of kind ``access``, appended before the page is shown."""
        await self.writer.run(
            lambda store: store.append_audit(
                audit_records.access(self.ctx.now(), source, page, patient_id)
            )
        )

    # --- scheduled work (§8) ------------------------------------------------------------------

    # --- CDS Hooks (docs/contracts.md §6) ---------------------------------------------------------

    def keep_cards(self, cards: list[dict[str, Any]]) -> None:
        """Keep the cards a hook answered, without waiting for the commit: the answer is a
        read-only check and goes out at once; feedback comes seconds later, from a person."""
        if cards and self._cards.add(cards):
            self.writer.submit(self._cards.unit()).add_done_callback(_cards_failed)

    async def record_feedback(
        self, service: str, items: list[CardFeedback], source: Source
    ) -> list[FeedbackRecorded]:
        """Raises UnknownCard (nothing recorded) when an item names a card not answered."""
        return await self.writer.run(
            lambda store: cds.record_feedback(self.ctx, store, service, items, source)
        )

    async def run_scheduled(
        self,
        until: datetime,
        patient_ids: list[str] | None = None,
        source: Source = SCHEDULER,
    ) -> dict[str, tuple[Finding, ...]]:
        """Scheduled work up to ``until`` for these patients (None: every one): the
        housekeeping, then the patients in units of ``SCHEDULED_PATIENTS_PER_UNIT``."""
        ids = await self.writer.run(
            lambda store: scheduled.housekeeping(self.ctx, store, until, patient_ids, source)
        )
        found: dict[str, tuple[Finding, ...]] = {}
        for chunk in _chunks(ids, SCHEDULED_PATIENTS_PER_UNIT):
            found |= await self.writer.run(
                lambda store, chunk=chunk: scheduled.monitoring_alerts(
                    self.ctx, store, until, chunk, source
                )
            )
        return found

    async def run_scheduled_as(
        self, holder: str, until: datetime, ttl: timedelta
    ) -> dict[str, tuple[Finding, ...]] | None:
        """Scheduled work up to ``until`` for every patient, if ``holder`` holds or takes the
        scheduler lease (until ``until + ttl``); None when another gateway holds it. Each unit
        of the work first checks that the lease is still ``holder``'s (renewing it as the
        scheduler's ticks would, every third of ``ttl``), and the run is recorded in the last:
        a gateway whose lease ran out meanwhile stops, and the new holder runs the work again
        (it is restart-safe)."""
        source, started = Source("scheduler", holder), time.monotonic()

        def held(store: Store) -> bool:
            elapsed = timedelta(seconds=time.monotonic() - started)
            if elapsed >= ttl / 3:
                return store.take_lease(SCHEDULER_LEASE, holder, until + elapsed, ttl)
            lease = store.lease(SCHEDULER_LEASE)
            return lease is not None and lease["holder"] == holder

        def start(store: Store) -> list[str] | None:
            if not store.take_lease(SCHEDULER_LEASE, holder, until, ttl):
                return None
            return scheduled.housekeeping(self.ctx, store, until, None, source)

        def patients(store: Store, chunk: list[str]) -> dict[str, tuple[Finding, ...]] | None:
            if not held(store):
                return None
            return scheduled.monitoring_alerts(self.ctx, store, until, chunk, source)

        def finish(store: Store) -> bool:
            if held(store):
                store.record_run(SCHEDULER_LEASE, holder, until)
                return True
            return False

        ids = await self.writer.run(start)
        if ids is None:
            return None
        found: dict[str, tuple[Finding, ...]] = {}
        for chunk in _chunks(ids, SCHEDULED_PATIENTS_PER_UNIT):
            part = await self.writer.run(lambda store, chunk=chunk: patients(store, chunk))
            if part is None:
                return None
            found |= part
        return found if await self.writer.run(finish) else None

    async def take_lease(self, holder: str, now: datetime, ttl: timedelta) -> bool:
        """Take or renew the scheduler lease until ``now + ttl``; False while another holds it."""
        return await self.writer.run(
            lambda store: store.take_lease(SCHEDULER_LEASE, holder, now, ttl)
        )

    async def release_lease(self, holder: str, now: datetime) -> None:
        """Let the scheduler lease go (a clean shutdown): another gateway takes it at once."""
        await self.writer.run(lambda store: store.release_lease(SCHEDULER_LEASE, holder, now))


class _CardsToKeep:
    """Cards answered while the writer is busy wait for one unit of work together, instead of
    one unit per hook call."""

    def __init__(self) -> None:
        self._waiting: list[dict[str, Any]] = []
        self._queued = False
        self._lock = threading.Lock()

    def add(self, cards: list[dict[str, Any]]) -> bool:
        """True when a unit must be queued for them (none is waiting to run yet)."""
        with self._lock:
            self._waiting += cards
            first, self._queued = not self._queued, True
            return first

    def unit(self) -> Callable[[Store], None]:
        taken: list[dict[str, Any]] = []

        def keep(store: Store) -> None:
            if not taken:  # a batch run again (another unit failed) keeps the same cards
                with self._lock:
                    taken.extend(self._waiting)
                    self._waiting, self._queued = [], False
            cds.keep_cards(store, taken)

        return keep


def _cards_failed(done: Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.warning("CDS cards not kept: %s", type(done.exception()).__name__)


def _chunks(values: list[str], size: int) -> list[list[str]]:
    return [values[start : start + size] for start in range(0, len(values), size)]
