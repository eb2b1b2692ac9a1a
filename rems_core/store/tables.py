"""The database schema (SQLModel). Migrations in ``migrations/`` create exactly these tables.

Times are stored as UTC; identifiers of people (names, birth dates, MRNs) live only here.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Index,
    LargeBinary,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel


class UtcDateTime(TypeDecorator):
    """Timezone-aware UTC in Python, on SQLite and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime reached the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    # On SQLite the value is text in SQLAlchemy's format (microseconds always written); one
    # function each way instead of two chained ones, as every observation row carries several.
    def bind_processor(self, dialect: Any) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def to_text(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError("naive datetime reached the store")
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

        return to_text

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def from_text(value: str | None) -> datetime | None:
            return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)

        return from_text


def _utc(**kw: Any) -> Any:
    return Field(sa_column=Column(UtcDateTime(), **kw))


def _json() -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class PrescriberRow(SQLModel, table=True):
    __tablename__ = "prescriber"
    npi: str = Field(primary_key=True, max_length=10)
    name: str = ""
    certified: bool = False
    certified_on: date | None = None
    dea: str | None = None
    email: str | None = None


class DesigneeRow(SQLModel, table=True):
    __tablename__ = "designee"
    id: str = Field(primary_key=True)
    name: str = ""


class DesigneeAttachment(SQLModel, table=True):
    __tablename__ = "designee_attachment"
    designee_id: str = Field(primary_key=True, foreign_key="designee.id")
    prescriber_npi: str = Field(primary_key=True, foreign_key="prescriber.npi")


class PharmacyRow(SQLModel, table=True):
    __tablename__ = "pharmacy"
    npi: str = Field(primary_key=True, max_length=10)
    name: str = ""
    ncpdp: str | None = None


class PharmacyEnrollmentRow(SQLModel, table=True):
    __tablename__ = "pharmacy_enrollment"
    pharmacy_npi: str = Field(primary_key=True, foreign_key="pharmacy.npi")
    setting: str = Field(primary_key=True)
    certified: bool = False
    certified_on: date | None = None
    recertify_by: date | None = None


class TradePartnerRow(SQLModel, table=True):
    """A wholesaler or distributor (docs/rules.md §10); ``handle`` is the registry file's id."""

    __tablename__ = "trade_partner"
    kind: str = Field(primary_key=True)  # wholesaler | distributor
    handle: str = Field(primary_key=True)
    name: str = ""
    enrolled_on: date | None = None
    certified: bool = False
    certified_on: date | None = None
    recertify_by: date | None = None


class TradePartnerIdentifierRow(SQLModel, table=True):
    """A wholesaler's or distributor's identifiers (DEA, GLN, HIN, …): one owner each."""

    __tablename__ = "trade_partner_identifier"
    __table_args__ = (
        ForeignKeyConstraint(["kind", "handle"], ["trade_partner.kind", "trade_partner.handle"]),
        Index("ix_trade_partner_identifier_owner", "kind", "handle"),
    )
    system: str = Field(primary_key=True)
    value: str = Field(primary_key=True)
    kind: str
    handle: str


class PatientRow(SQLModel, table=True):
    __tablename__ = "patient"
    id: str = Field(primary_key=True)  # the REMS patient id the gateway issues
    designation: str = "general"
    treatment_start: date | None = None
    legacy_enrolled: bool = False
    family_name: str = ""
    given_name: str = ""
    birth_date: date | None = None
    sex: str | None = None


class PatientIdentifierRow(SQLModel, table=True):
    __tablename__ = "patient_identifier"
    system: str = Field(primary_key=True)
    value: str = Field(primary_key=True)
    patient_id: str = Field(foreign_key="patient.id", index=True)


class ObservationRow(SQLModel, table=True):
    """A reported observation as received: original value and unit, never rewritten."""

    __tablename__ = "observation"
    __table_args__ = (
        Index("ix_observation_specimen", "patient_id", "specimen_key", "code"),
        Index("ix_observation_drawn", "patient_id", "drawn"),
    )
    id: int | None = Field(default=None, primary_key=True)
    patient_id: str | None = Field(default=None, foreign_key="patient.id")
    specimen_key: str
    code: str
    value: str
    unit: str
    status: str
    drawn: datetime = _utc(nullable=False)
    received: datetime = _utc(nullable=False)
    current: bool = True  # False once corrected, cancelled or replaced
    channel: str = ""
    # meta.source of the Observation it is in the patient's FHIR record, for a result that did
    # not come as a FHIR Observation ("" for one that did: that resource is the record)
    source: str = ""


class AncResultRow(SQLModel, table=True):
    """An ANC per µL (direct or derived) that a specimen yields; replaced when it is re-derived."""

    __tablename__ = "anc_result"
    __table_args__ = (
        Index("ix_anc_result_patient", "patient_id", "current", "drawn"),
        Index("ix_anc_result_specimen", "patient_id", "specimen_key"),
    )
    id: str = Field(primary_key=True)
    patient_id: str = Field(foreign_key="patient.id")
    specimen_key: str
    code: str
    anc: int | None = None
    original_value: str = ""
    original_unit: str = ""
    category: str | None = None
    usable: bool = False
    derived: bool = False
    status: str = "final"
    warnings: list[dict[str, str]] = Field(default_factory=list, sa_column=Column(JSON))
    advice: str = ""
    drawn: datetime = _utc(nullable=False)
    received: datetime = _utc(nullable=False)
    current: bool = True


class PsfRow(SQLModel, table=True):
    __tablename__ = "psf"
    __table_args__ = (Index("ix_psf_patient", "patient_id", "status"),)
    id: str = Field(primary_key=True)
    patient_id: str = Field(foreign_key="patient.id")
    type: str
    status: str
    submitted_at: datetime = _utc(nullable=False)
    judged_at: datetime = _utc(nullable=False)
    form: dict[str, Any] = _json()
    reasons: list[dict[str, str]] = Field(default_factory=list, sa_column=Column(JSON))
    warnings: list[dict[str, str]] = Field(default_factory=list, sa_column=Column(JSON))
    rule_pack: str = ""
    rule_pack_version: str = ""
    source: str = ""  # channel, or "registry" for an enrollment loaded with the registry


class StatusEvent(SQLModel, table=True):
    """§7: every change of treatment status, with who, when and why."""

    __tablename__ = "status_event"
    id: int | None = Field(default=None, primary_key=True)
    patient_id: str = Field(foreign_key="patient.id", index=True)
    at: datetime = _utc(nullable=False)
    from_status: str
    to_status: str
    actor: str
    why: str


class DecisionRow(SQLModel, table=True):
    __tablename__ = "decision"
    __table_args__ = (UniqueConstraint("request_id", name="uq_decision_request_id"),)
    id: str = Field(primary_key=True)
    request_id: str | None = None
    request_hash: str
    patient_id: str | None = Field(default=None, foreign_key="patient.id", index=True)
    at: datetime = _utc(nullable=False)
    decided_at: datetime = _utc(nullable=False)
    rule_pack: str
    rule_pack_version: str
    outcome: str
    result: dict[str, Any] = _json()
    request: dict[str, Any] = _json()
    channel: str = ""
    actor: str = ""


class RdaRow(SQLModel, table=True):
    """An RDA and its life (docs/rules.md §6.4): issued → dispensed | voided | expired."""

    __tablename__ = "rda"
    __table_args__ = (
        Index("ix_rda_decision", "decision_id"),  # found by its order's request id
        Index("ix_rda_state", "state", "valid_until"),  # the issued ones the scheduler expires
    )
    number: str = Field(primary_key=True)
    decision_id: str = Field(foreign_key="decision.id")
    patient_id: str | None = Field(default=None, foreign_key="patient.id")
    pharmacy_npi: str
    prescriber_npi: str
    max_days_supply: int
    valid_until: datetime = _utc(nullable=False)
    state: str = "issued"  # issued | dispensed | voided | expired
    state_at: datetime | None = _utc(nullable=True)  # when it left `issued`
    state_why: str = ""


class DispenseRecordRow(SQLModel, table=True):
    """A dispense a pharmacy system reported, with what the gateway made of it."""

    __tablename__ = "dispense_record"
    __table_args__ = (
        Index("ix_dispense_record_rda", "rda_number"),
        Index("ix_dispense_record_content", "content_hash"),  # a record sent again
    )
    id: str = Field(primary_key=True)
    rda_number: str | None = Field(default=None, foreign_key="rda.number")
    request_id: str | None = None
    patient_id: str | None = Field(default=None, foreign_key="patient.id")
    drug: str
    quantity: str | None = None  # the decimal as sent
    days_supply: int | None = None
    dispensed_at: datetime = _utc(nullable=False)
    recorded_at: datetime = _utc(nullable=False)
    pharmacy_npi: str | None = None
    channel: str
    actor: str
    outcome: str  # recorded | refused
    findings: list[dict[str, str]] = Field(default_factory=list, sa_column=Column(JSON))
    content_hash: str


class OverrideRow(SQLModel, table=True):
    """An authorized pharmacist override (§6.2); only these count towards the limit."""

    __tablename__ = "pharmacist_override"
    id: int | None = Field(default=None, primary_key=True)
    patient_id: str = Field(foreign_key="patient.id", index=True)
    decision_id: str = Field(foreign_key="decision.id")
    at: datetime = _utc(nullable=False)
    pharmacy_npi: str
    prescriber_npi: str
    rationale: str


class MonitoringAlert(SQLModel, table=True):
    """§8: overdue labs and labs missed as the scheduler found them."""

    __tablename__ = "monitoring_alert"
    id: int | None = Field(default=None, primary_key=True)
    patient_id: str = Field(foreign_key="patient.id", index=True)
    code: str
    at: datetime = _utc(nullable=False)
    detail: str = ""


class SiteSetting(SQLModel, table=True):
    """Small key-value facts the gateway keeps (e.g. the last scheduled run)."""

    __tablename__ = "site_setting"
    key: str = Field(primary_key=True)
    value: str


class AuditRecord(SQLModel, table=True):
    """§9: one append-only, hash-chained record of every decision and change."""

    __tablename__ = "audit_record"
    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    at: datetime = _utc(nullable=False)  # when it was recorded
    clinical_at: datetime = _utc(nullable=False)  # the event's clinical time
    kind: str  # dispense | psf | psf_signature | lab | registry | scheduled | rda | …
    channel: str
    actor: str
    subject: str | None = None  # REMS patient id, NPI or designee id
    input_hash: str  # sha256 of the input as received or as decided on
    input_ref: str  # where the input is stored (decision, PSF, observations, …)
    rule_pack: str = ""
    rule_pack_version: str = ""
    outcome: str
    reasons: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    warnings: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    prev_hash: str
    hash: str


class AuditHead(SQLModel, table=True):
    """The newest record of the chain; its row lock orders writers across processes."""

    __tablename__ = "audit_head"
    id: int = Field(primary_key=True)  # always 1
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    hash: str
    # Bumped with every registry change, so that writers may keep registry reads between batches.
    registry_version: int = Field(sa_column=Column(BigInteger, nullable=False))


class Hl7MessageRow(SQLModel, table=True):
    """An HL7 v2 message as received, with the ACK it was answered with (for duplicates)."""

    __tablename__ = "hl7_message"
    __table_args__ = (
        Index("ix_hl7_message_control", "sender", "control_id"),
        Index(  # the kept ones, for the scheduled purge
            "ix_hl7_message_purge",
            "purge_after",
            sqlite_where=text("purge_after IS NOT NULL"),
            postgresql_where=text("purge_after IS NOT NULL"),
        ),
    )
    id: int | None = Field(default=None, primary_key=True)
    sender: str  # MSH-3|MSH-4
    control_id: str  # MSH-10
    content_hash: str  # sha256 of the message without MSH-7
    message_type: str
    received: datetime = _utc(nullable=False)
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    ack: str
    disposition: str  # accepted | no_results | unmatched | conflict (held for review)
    patient_id: str | None = None
    purge_after: datetime | None = _utc(nullable=True)


class FhirResourceRow(SQLModel, table=True):
    """One version of a FHIR resource as received (a MedicationRequest with its decision)."""

    __tablename__ = "fhir_resource"
    __table_args__ = (
        UniqueConstraint("resource_type", "id", "version_id", name="uq_fhir_resource_version"),
        # Conditional create and re-sent resources: one current resource per business identifier,
        # kept by the database even if two writers raced.
        Index(
            "uq_fhir_resource_identifier",
            "resource_type",
            "identifier",
            unique=True,
            sqlite_where=text("current"),
            postgresql_where=text("current"),
        ),
        Index("ix_fhir_resource_identifier", "resource_type", "identifier"),  # for reads
        Index("ix_fhir_resource_current", "resource_type", "id", "current"),
        Index("ix_fhir_resource_patient", "resource_type", "patient_id", "effective"),
        Index("ix_fhir_resource_content", "resource_type", "content_hash"),  # re-sent creates
    )
    row_id: int | None = Field(default=None, primary_key=True)
    resource_type: str
    id: str
    version_id: int
    current: bool = True
    last_updated: datetime = _utc(nullable=False)
    identifier: str | None = None  # "system|value" of the business identifier
    content_hash: str  # of the resource as received, without id and meta
    patient_id: str | None = None
    code: str | None = None  # the LOINC code of an Observation
    effective: datetime | None = _utc(nullable=True)
    body: dict[str, Any] = _json()
    owner: str | None = None  # the client that created it (ids are one space per gateway)


class FhirPatientIdentifierRow(SQLModel, table=True):
    """The identifiers of a client's current Patient: what links it to a registry patient."""

    __tablename__ = "fhir_patient_identifier"
    __table_args__ = (Index("ix_fhir_patient_identifier", "system", "value"),)
    resource_id: str = Field(primary_key=True)
    system: str = Field(primary_key=True)
    value: str = Field(primary_key=True)


class ReviewItemRow(SQLModel, table=True):
    """What the gateway holds for a person to look at (docs/contracts.md §4, §5): results of no
    or of two patients, a reused control id, a merge of two registry patients."""

    __tablename__ = "review_item"
    __table_args__ = (
        Index("ix_review_item_open", "status", "kind", "received"),
        Index("ix_review_item_purge", "status", "purge_after"),
    )
    id: str = Field(primary_key=True)
    kind: str  # unmatched | ambiguous | conflict | merge
    status: str = "open"  # open | linked | discarded | purged
    channel: str
    sender: str  # MSH-3|MSH-4, or the FHIR client
    received: datetime = _utc(nullable=False)  # the clinical now of its arrival
    candidates: list[dict[str, str]] = Field(default_factory=list, sa_column=Column(JSON))
    results: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    findings: list[dict[str, str]] = Field(default_factory=list, sa_column=Column(JSON))
    patients: list[str] = Field(default_factory=list, sa_column=Column(JSON))  # those it names
    message: str | None = None  # "MSH-3|MSH-4#MSH-10" of the HL7 message
    resources: list[str] = Field(default_factory=list, sa_column=Column(JSON))  # "Type/id"
    purge_after: datetime | None = _utc(nullable=True)
    resolved_at: datetime | None = _utc(nullable=True)
    resolved_by: str | None = None
    resolution: str = ""  # linked to whom, or why it was discarded
    patient_id: str | None = None  # the registry patient it was filed to


class ReviewKeyRow(SQLModel, table=True):
    """The identifiers (and FHIR references) an open item's results wait for."""

    __tablename__ = "review_key"
    __table_args__ = (Index("ix_review_key_identifier", "system", "value"),)
    review_id: str = Field(primary_key=True, foreign_key="review_item.id")
    system: str = Field(primary_key=True)
    value: str = Field(primary_key=True)


class MonitoringTaskRow(SQLModel, table=True):
    """A work item the gateway opened (docs/contracts.md §7) and closes when its condition
    clears; each version is also a FHIR Task in ``fhir_resource``. ``key`` (kind, whom, period)
    makes opening it idempotent: the same occurrence never opens twice."""

    __tablename__ = "monitoring_task"
    __table_args__ = (
        UniqueConstraint("key", name="uq_monitoring_task_key"),
        Index("ix_monitoring_task_patient", "patient_id", "status"),
        Index("ix_monitoring_task_owner", "owner_npi", "status"),
        Index("ix_monitoring_task_status", "status", "kind"),
    )
    id: str = Field(primary_key=True)  # the Task's FHIR id
    key: str  # "<kind>|<patient or review item>|<period>"
    kind: str  # psf-due | psf-window-closing | rationale-required | anc-overdue | …
    patient_id: str | None = None
    owner_npi: str | None = None  # none: the operator's (unmatched-result)
    designee_may: bool = False  # a designee may do it for the owner (rules §5.2)
    focus: str | None = None  # "QuestionnaireResponse/…", "Observation/…"
    status: str = "requested"  # requested | completed | cancelled
    opened: datetime = _utc(nullable=False)  # clinical time
    due: datetime | None = _utc(nullable=True)
    closed: datetime | None = _utc(nullable=True)
    reason: str = ""  # why it was opened (no PHI)
    closed_why: str = ""


class PsfDraftRow(SQLModel, table=True):
    """A monthly PSF the gateway drafted from the labs (rules §5.6, §8); the response itself is a
    QuestionnaireResponse `in-progress` in ``fhir_resource`` under the same id."""

    __tablename__ = "psf_draft"
    __table_args__ = (
        UniqueConstraint("patient_id", "due", name="uq_psf_draft_period"),
        Index("ix_psf_draft_status", "status", "patient_id"),
    )
    id: str = Field(primary_key=True)  # the QuestionnaireResponse id
    patient_id: str = Field(foreign_key="patient.id")
    prescriber_npi: str
    period_start: date  # the last accepted PSF's submission date
    due: date  # one calendar month after it
    status: str = "open"  # open | submitted | withdrawn
    prefill_hash: str  # what was pre-filled: a new version only when it changes
    opened: datetime = _utc(nullable=False)
    closed: datetime | None = _utc(nullable=True)
    # A prescriber's rationale from a CDS Hooks override (reason, text, card, user), pre-filled
    # for the prescriber to sign; the draft is kept open for it even before its lead time.
    rationale: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class SchedulerLease(SQLModel, table=True):
    """Which gateway runs the periodic scheduled work, until when (one per cluster)."""

    __tablename__ = "scheduler_lease"
    name: str = Field(primary_key=True)
    holder: str  # host, process and a random part
    acquired: datetime = _utc(nullable=False)
    expires: datetime = _utc(nullable=False)
    last_run: datetime | None = _utc(nullable=True)


class SubscriptionRow(SQLModel, table=True):
    """A FHIR Subscription (R4 backport) as the deliverer needs it; the resource's versions are in
    ``fhir_resource``."""

    __tablename__ = "subscription"
    __table_args__ = (Index("ix_subscription_topic", "topic", "status"),)
    id: str = Field(primary_key=True)
    topic: str  # urn:rems-gateway:topic:task | urn:rems-gateway:topic:decision
    filters: list[dict[str, str]] = Field(default_factory=list, sa_column=Column(JSON))
    endpoint: str
    headers: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    payload: str = "id-only"  # empty | id-only | full-resource
    content_type: str = "application/fhir+json"
    status: str = "requested"  # requested | active | error | off
    events: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    owner: str = ""  # the client that created it
    created: datetime = _utc(nullable=False)
    error: str = ""


class NotificationRow(SQLModel, table=True):
    """The durable outbound queue: one notification for one subscription, delivered with retry
    and backoff, or dead-lettered."""

    __tablename__ = "notification"
    __table_args__ = (
        Index("ix_notification_due", "status", "next_attempt"),
        Index("ix_notification_subscription", "subscription_id", "event_number"),
    )
    id: int | None = Field(default=None, primary_key=True)
    subscription_id: str = Field(foreign_key="subscription.id")
    event_number: int = Field(sa_column=Column(BigInteger, nullable=False))
    kind: str  # handshake | heartbeat | event-notification
    focus: str | None = None  # "Task/…"
    body: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    status: str = "pending"  # pending | delivered | dead
    attempts: int = 0
    created: datetime = _utc(nullable=False)
    next_attempt: datetime = _utc(nullable=False)
    delivered: datetime | None = _utc(nullable=True)
    last_error: str = ""


class CdsCard(SQLModel, table=True):
    """A card a CDS service answered (docs/contracts.md §6): what feedback on it refers to."""

    __tablename__ = "cds_card"
    __table_args__ = (Index("ix_cds_card_patient", "patient_id", "issued"),)
    uuid: str = Field(primary_key=True)
    service: str  # e.g. clozapine-rems-order-sign
    hook_instance: str
    client: str  # the CDS client's iss
    user_id: str | None = None  # context.userId: who was shown it (e.g. Practitioner/…)
    patient_id: str | None = None
    order: str | None = None  # the order it is about ("MedicationRequest/…"), None: patient-view
    outcome: str  # the decision's outcome (authorized, rationale_required, denied) or "status"
    reasons: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    rule_pack: str
    rule_pack_version: str
    issued: datetime = _utc(nullable=False)


class CdsFeedback(SQLModel, table=True):
    """What a user did with a card: accepted it (a suggestion) or overrode it, with a reason."""

    __tablename__ = "cds_feedback"
    __table_args__ = (
        UniqueConstraint("card", "outcome", "outcome_timestamp", name="uq_cds_feedback_once"),
    )
    id: int | None = Field(default=None, primary_key=True)
    card: str = Field(foreign_key="cds_card.uuid")
    outcome: str  # accepted | overridden
    outcome_timestamp: datetime = _utc(nullable=False)
    override_reason: str | None = None  # a code of urn:rems-gateway:cds-override-reason
    comment: str = ""  # the user's comment (may name the patient: never logged)
    suggestions: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    draft: str | None = None  # the PSF draft that holds the rationale
    received: datetime = _utc(nullable=False)
