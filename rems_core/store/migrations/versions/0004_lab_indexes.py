"""Indexes for the lab-result hot path: a message reads only what it can touch.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_observation_drawn", "observation", ["patient_id", "drawn"])
    op.drop_index("ix_anc_result_patient", table_name="anc_result")
    op.create_index("ix_anc_result_patient", "anc_result", ["patient_id", "current", "drawn"])
    op.create_index("ix_anc_result_specimen", "anc_result", ["patient_id", "specimen_key"])


def downgrade() -> None:
    op.drop_index("ix_anc_result_specimen", table_name="anc_result")
    op.drop_index("ix_anc_result_patient", table_name="anc_result")
    op.create_index("ix_anc_result_patient", "anc_result", ["patient_id", "current"])
    op.drop_index("ix_observation_drawn", table_name="observation")
