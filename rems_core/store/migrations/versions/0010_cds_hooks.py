"""CDS Hooks (issue 16): the cards the services answered, the feedback on them, and the PSF
draft's rationale taken from an override.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import rems_core.store.tables

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    utc = rems_core.store.tables.UtcDateTime
    op.add_column("psf_draft", sa.Column("rationale", sa.JSON(), nullable=True))
    op.create_table(
        "cds_card",
        sa.Column("uuid", sa.String(), nullable=False),
        sa.Column("service", sa.String(), nullable=False),
        sa.Column("hook_instance", sa.String(), nullable=False),
        sa.Column("client", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=True),
        sa.Column("patient_id", sa.String(), nullable=True),
        sa.Column("order", sa.String(), nullable=True),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("rule_pack", sa.String(), nullable=False),
        sa.Column("rule_pack_version", sa.String(), nullable=False),
        sa.Column("issued", utc(), nullable=False),
        sa.PrimaryKeyConstraint("uuid"),
    )
    op.create_index("ix_cds_card_patient", "cds_card", ["patient_id", "issued"])
    op.create_table(
        "cds_feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("card", sa.String(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("outcome_timestamp", utc(), nullable=False),
        sa.Column("override_reason", sa.String(), nullable=True),
        sa.Column("comment", sa.String(), nullable=False),
        sa.Column("suggestions", sa.JSON(), nullable=False),
        sa.Column("draft", sa.String(), nullable=True),
        sa.Column("received", utc(), nullable=False),
        sa.ForeignKeyConstraint(["card"], ["cds_card.uuid"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("card", "outcome", "outcome_timestamp", name="uq_cds_feedback_once"),
    )


def downgrade() -> None:
    op.drop_table("cds_feedback")
    op.drop_index("ix_cds_card_patient", table_name="cds_card")
    op.drop_table("cds_card")
    with op.batch_alter_table("psf_draft") as batch:
        batch.drop_column("rationale")
