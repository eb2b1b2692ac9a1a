"""The RDA's life (issue 14): its state with when and why, and the dispenses recorded against it.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import rems_core.store.tables

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    utc = rems_core.store.tables.UtcDateTime
    with op.batch_alter_table("rda") as batch:
        batch.add_column(sa.Column("state", sa.String(), nullable=False, server_default="issued"))
        batch.add_column(sa.Column("state_at", utc(), nullable=True))
        batch.add_column(sa.Column("state_why", sa.String(), nullable=False, server_default=""))
    op.create_index("ix_rda_decision", "rda", ["decision_id"])
    op.create_index("ix_rda_state", "rda", ["state", "valid_until"])
    op.create_table(
        "dispense_record",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("rda_number", sa.String(), nullable=True),
        sa.Column("request_id", sa.String(), nullable=True),
        sa.Column("patient_id", sa.String(), nullable=True),
        sa.Column("drug", sa.String(), nullable=False),
        sa.Column("quantity", sa.String(), nullable=True),
        sa.Column("days_supply", sa.Integer(), nullable=True),
        sa.Column("dispensed_at", utc(), nullable=False),
        sa.Column("recorded_at", utc(), nullable=False),
        sa.Column("pharmacy_npi", sa.String(), nullable=True),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("findings", sa.JSON(), nullable=True),
        sa.Column("content_hash", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(["rda_number"], ["rda.number"]),
        sa.ForeignKeyConstraint(["patient_id"], ["patient.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_dispense_record_rda", "dispense_record", ["rda_number"])
    op.create_index("ix_dispense_record_content", "dispense_record", ["content_hash"])


def downgrade() -> None:
    op.drop_table("dispense_record")
    op.drop_index("ix_rda_state", table_name="rda")
    op.drop_index("ix_rda_decision", table_name="rda")
    with op.batch_alter_table("rda") as batch:
        batch.drop_column("state_why")
        batch.drop_column("state_at")
        batch.drop_column("state")
