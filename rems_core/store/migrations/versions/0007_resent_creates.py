"""Creates sent again are found by their content (issue 13: a Bundle sent twice changes
nothing).

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_fhir_resource_content", "fhir_resource", ["resource_type", "content_hash"])


def downgrade() -> None:
    op.drop_index("ix_fhir_resource_content", table_name="fhir_resource")
