"""Values the application service and its units of work exchange with the channels: what an edge
hands the service (submissions, requests) and what it gets back (receipts)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mappings.fhir.etasu import EtasuCheck
from mappings.fhir.subscription import SubscriptionSpec
from rems_core.model import (
    AncResult,
    Decision,
    DispenseRequest,
    Finding,
    Identifier,
    LabResult,
    PatientStatusForm,
    PsfOutcome,
)
from rems_core.rda import DispenseFiled, DispenseRecord, OrderAction, OrderEnd, RdaState
from rems_core.status import RemsStatus
from rems_core.store.fhir_repo import ResourceIndex, StoredResource

#: What the review queue holds: results of no registry patient, or of two; a message whose
#: control id was used for another; a merge of two registry patients.
REVIEW_KINDS = ("unmatched", "ambiguous", "conflict", "merge")


@dataclass(frozen=True)
class Source:
    """Where an event came from, for the record: the channel and the authenticated actor."""

    channel: str
    actor: str = ""
    message: str = ""  # the HL7 control id (MSH-10) it came in, if any

    @property
    def message_ref(self) -> str | None:
        """ "MSH-3|MSH-4#MSH-10" of the HL7 message it came in (None: none)."""
        return f"{self.actor}#{self.message}" if self.message else None


@dataclass(frozen=True)
class ReceivedMessage:
    """An HL7 v2 message as the store keeps it."""

    sender: str  # MSH-3|MSH-4
    control_id: str  # MSH-10
    content_hash: str  # of the message without MSH-7, to tell a resend from a reuse of the id
    message_type: str
    raw: bytes
    received: datetime  # the clinical "now" of its arrival


@dataclass(frozen=True)
class LabOutcome:
    patient: str | None
    results: tuple[AncResult, ...]
    warnings: tuple[Finding, ...] = ()
    review_id: str | None = None  # held for review: no patient, or two

    @property
    def matched(self) -> bool:
        return self.patient is not None


@dataclass(frozen=True)
class ResourceDraft:
    """A resource as received and validated, with what the store finds it by."""

    resource_type: str
    body: dict[str, Any]
    content_hash: str
    index: ResourceIndex
    resource_id: str | None = None  # PUT names it; a create gets a new one (or its identifier's)
    if_none_exist: bool = False  # conditional create: an existing match is returned untouched
    if_match: int | None = None  # PUT with If-Match: the version it must replace


@dataclass(frozen=True)
class Recorded:
    resource: StoredResource
    created: bool  # a new resource (201), not a new version of one (200)
    unchanged: bool = False  # the same resource again, or a conditional create's match


@dataclass(frozen=True)
class LabSubmission:
    draft: ResourceDraft
    patient_identifiers: tuple[Identifier, ...]  # the subject's, when it is an identifier
    patient_id: str | None  # the subject, when it is the gateway's Patient/{id}
    result: LabResult | None  # None: stored, but nothing the REMS reads
    warnings: tuple[Finding, ...] = ()  # why a resource the REMS would read was not (§1)


@dataclass(frozen=True)
class LabsRecorded:
    recorded: list[Recorded]
    outcomes: list[LabOutcome]  # one per patient (or unmatched subject) whose results were taken
    sources: list[list[int]] = field(default_factory=list)  # per outcome: its submissions


@dataclass(frozen=True)
class PatientNamed:
    """The patient a search names: by the gateway's id, by an identifier, or both (ANDed, as
    FHIR ANDs search parameters)."""

    patient_id: str | None = None
    identifier: Identifier | None = None


@dataclass(frozen=True)
class DispenseSubmission:
    draft: ResourceDraft
    patient_identifiers: tuple[Identifier, ...]  # the subject's, when it is an identifier
    patient_id: str | None  # the subject, when it is the gateway's Patient/{id}
    request: DispenseRequest


@dataclass(frozen=True)
class DispenseRecorded:
    recorded: Recorded | None  # None: the subject names no Patient of the gateway
    decision: Decision | None


@dataclass(frozen=True)
class PsfSubmission:
    draft: ResourceDraft  # the QuestionnaireResponse as received
    form: PatientStatusForm
    patient_identifiers: tuple[Identifier, ...]  # the subject's, when it is an identifier
    patient_id: str | None  # the subject, when it is the gateway's Patient/{id}
    shape: Callable[[dict[str, Any], PsfOutcome], dict[str, Any]]  # the body to store
    received: datetime  # the clinical now of its arrival (the version's lastUpdated)


@dataclass(frozen=True)
class PsfRecorded:
    recorded: Recorded | None  # None: a refused signature, nothing stored
    outcome: PsfOutcome | None  # None: the same response again, answered from the store


@dataclass(frozen=True)
class SignRequest:
    resource_id: str  # the QuestionnaireResponse
    version_id: int  # its version the signer saw
    psf_id: str
    patient_id: str
    signer: str  # the signed-in prescriber's NPI
    at: datetime
    next_version: Callable[[dict[str, Any], PsfOutcome], ResourceDraft]


@dataclass(frozen=True)
class PatientSubmission:
    """A client's FHIR Patient (a PUT keeps its id, a POST gets one) and the identifiers it is
    linked to a registry patient by (system and value; ones without a system are not)."""

    draft: ResourceDraft
    identifiers: tuple[Identifier, ...]
    if_none_exist: Identifier | None = None  # a conditional create: the Patient carrying it


@dataclass(frozen=True)
class PatientRecorded:
    recorded: Recorded
    patient_id: str | None  # the registry patient it is linked to
    ambiguous: bool = False  # its identifiers name two registry patients: linked to none
    filed: tuple[str, ...] = ()  # review items filed to the patient by this link


#: What a Bundle entry becomes once the ids of the entries it refers to are known.
EntrySubmission = PatientSubmission | LabSubmission | ResourceDraft


@dataclass(frozen=True)
class BundleItem:
    """One entry of a Bundle, read and checked by the edge, to be stored in one unit of work
    with the others. Its id is found (or made) first, then ``build`` makes its submission with
    every reference to an entry rewritten to that entry's `Type/id`."""

    number: int  # its place in the Bundle
    resource_type: str
    keys: frozenset[str]  # the references that name it: its fullUrl, `Type/id` of a PUT
    resource_id: str | None  # a PUT's id (update-as-create keeps it)
    identifier: str | None  # a create's business identifier, or its If-None-Exist one
    references: frozenset[str]  # the keys of the other entries it refers to
    content_hash: Callable[[dict[str, str]], str]  # of its resource, references rewritten
    build: Callable[[str, dict[str, str]], EntrySubmission]  # (its id, key → Type/id)


@dataclass(frozen=True)
class BundleRecorded:
    """What became of each entry (by number): a Patient, a resource stored as received, or a
    lab entry (Observation, DiagnosticReport: ``labs``, aligned with ``lab_numbers``); and, in a
    batch, the entries refused (number → VersionConflict, IdentifierTaken, ClientIdTaken)."""

    patients: dict[int, PatientRecorded]
    resources: dict[int, Recorded]
    lab_numbers: list[int]
    lab_submissions: list[LabSubmission]
    labs: LabsRecorded
    refused: dict[int, Exception]


@dataclass(frozen=True)
class OrderEnded:
    """What an order's end did: whether the gateway decided that order (else ORDER_NOT_FOUND in
    ``findings``), and its RDA (if one was issued) with the state it is in now."""

    known: bool
    voided: bool  # its RDA is voided (by this end, or by the same end sent before)
    rda: str | None = None
    rda_state: RdaState | None = None
    findings: tuple[Finding, ...] = ()


@dataclass(frozen=True)
class MedicationDispenseSubmission:
    draft: ResourceDraft  # the MedicationDispense as received
    record: DispenseRecord
    prescription: str | None  # the id of the gateway's MedicationRequest it names, if any


@dataclass(frozen=True)
class MedicationDispenseRecorded:
    recorded: Recorded
    filed: DispenseFiled


@dataclass(frozen=True)
class SubscriptionSubmission:
    """A FHIR Subscription as received (a create, or a PUT naming its id) and what it asks."""

    draft: ResourceDraft
    spec: SubscriptionSpec


@dataclass(frozen=True)
class MedicationRequestEnd:
    """A MedicationRequest updated to `cancelled`/`stopped` (a PUT to its id, or a create with
    its identifier): its next version (the decision of the original kept) and the order's end."""

    resource_id: str | None  # None: the MedicationRequest the draft's identifier names
    draft: ResourceDraft  # the next version as sent (its decision extension is not taken)
    at: datetime
    action: OrderAction


@dataclass(frozen=True)
class MedicationRequestEnded:
    recorded: Recorded | None  # None: no MedicationRequest has its identifier (ORDER_NOT_FOUND)
    ended: OrderEnded


@dataclass(frozen=True)
class OrderWork:
    """What a pharmacy order message asks: dispense checks, and orders' ends (ORC-1 CA/DC)."""

    requests: list[DispenseRequest]
    ends: list[OrderEnd]


@dataclass
class OrdersDone:
    """What the unit of work did with a pharmacy message, for its answer: a decision (or why
    none was made) per order, what each end did, what became of a dispense record."""

    decided: list[Decision | Finding]
    ended: list[OrderEnded]
    filed: list[DispenseFiled] = field(default_factory=list)

    def clear(self) -> None:
        self.decided.clear()
        self.ended.clear()
        self.filed.clear()


# --- CDS Hooks (docs/contracts.md §6) ------------------------------------------------------------


@dataclass(frozen=True)
class HookChecks:
    """What the engine says of a hook's patient and orders, read-only: the registry patient
    (None: none matched), its REMS status now, and one check per order (as `$rems-etasu`)."""

    patient_id: str | None
    status: RemsStatus | None
    checks: list[EtasuCheck]


@dataclass(frozen=True)
class CardFeedback:
    """One item of a feedback call: what the user did with a card."""

    card: str
    outcome: str  # accepted | overridden
    outcome_timestamp: datetime
    override_reason: str | None = None  # a code of urn:rems-gateway:cds-override-reason
    rationale_reason: str | None = None  # the PSF rationale reason it means (rules §5.4)
    comment: str = ""
    suggestions: tuple[str, ...] = ()


@dataclass(frozen=True)
class FeedbackRecorded:
    card: str
    recorded: bool  # False: this (card, outcome, time) was recorded already
    draft: str | None = None  # the PSF draft now holding the rationale


# --- replays of stored HL7 v2 messages (`rems-gateway replay`) ---------------------------------


@dataclass(frozen=True)
class Replayed:
    """What a replay made of one stored message: its disposition before and after, what was
    done (``note``), and whether anything new was stored."""

    row_id: int
    sender: str
    control_id: str
    before: str
    after: str
    note: str
    changed: bool = False  # something new stored (results filed, review items closed)
    patient: str | None = None
    filed: tuple[str, ...] = ()  # review items filed to the patient
