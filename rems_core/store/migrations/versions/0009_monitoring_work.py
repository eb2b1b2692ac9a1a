"""Monitoring work (issue 15): tasks, monthly PSF drafts, the scheduler's lease, FHIR
Subscriptions and their durable outbound queue.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import rems_core.store.tables

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    utc = rems_core.store.tables.UtcDateTime
    op.create_table(
        "monitoring_task",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("patient_id", sa.String(), nullable=True),
        sa.Column("owner_npi", sa.String(), nullable=True),
        sa.Column("designee_may", sa.Boolean(), nullable=False),
        sa.Column("focus", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("opened", utc(), nullable=False),
        sa.Column("due", utc(), nullable=True),
        sa.Column("closed", utc(), nullable=True),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("closed_why", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key", name="uq_monitoring_task_key"),
    )
    op.create_index("ix_monitoring_task_patient", "monitoring_task", ["patient_id", "status"])
    op.create_index("ix_monitoring_task_owner", "monitoring_task", ["owner_npi", "status"])
    op.create_index("ix_monitoring_task_status", "monitoring_task", ["status", "kind"])
    op.create_table(
        "psf_draft",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("patient_id", sa.String(), nullable=False),
        sa.Column("prescriber_npi", sa.String(), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("due", sa.Date(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("prefill_hash", sa.String(), nullable=False),
        sa.Column("opened", utc(), nullable=False),
        sa.Column("closed", utc(), nullable=True),
        sa.ForeignKeyConstraint(["patient_id"], ["patient.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("patient_id", "due", name="uq_psf_draft_period"),
    )
    op.create_index("ix_psf_draft_status", "psf_draft", ["status", "patient_id"])
    op.create_table(
        "scheduler_lease",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("holder", sa.String(), nullable=False),
        sa.Column("acquired", utc(), nullable=False),
        sa.Column("expires", utc(), nullable=False),
        sa.Column("last_run", utc(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "subscription",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("topic", sa.String(), nullable=False),
        sa.Column("filters", sa.JSON(), nullable=True),
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=True),
        sa.Column("payload", sa.String(), nullable=False),
        sa.Column("content_type", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("created", utc(), nullable=False),
        sa.Column("error", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_subscription_topic", "subscription", ["topic", "status"])
    op.create_table(
        "notification",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscription_id", sa.String(), nullable=False),
        sa.Column("event_number", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("focus", sa.String(), nullable=True),
        sa.Column("body", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created", utc(), nullable=False),
        sa.Column("next_attempt", utc(), nullable=False),
        sa.Column("delivered", utc(), nullable=True),
        sa.Column("last_error", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(["subscription_id"], ["subscription.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_notification_due", "notification", ["status", "next_attempt"])
    op.create_index(
        "ix_notification_subscription", "notification", ["subscription_id", "event_number"]
    )


def downgrade() -> None:
    op.drop_table("notification")
    op.drop_table("subscription")
    op.drop_table("scheduler_lease")
    op.drop_table("psf_draft")
    op.drop_table("monitoring_task")
