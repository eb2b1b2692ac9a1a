"""The scheduled purge of kept HL7 messages finds them by an index, not by reading every message
(issue 20: at five years of labs the housekeeping scanned all of `hl7_message` every run).

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEPT = sa.text("purge_after IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_hl7_message_purge",
        "hl7_message",
        ["purge_after"],
        sqlite_where=KEPT,
        postgresql_where=KEPT,
    )


def downgrade() -> None:
    op.drop_index("ix_hl7_message_purge", table_name="hl7_message")
