"""FHIR resources as received, every version kept (read, vread, search, conditional create).

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import rems_core.store.tables

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    utc = rems_core.store.tables.UtcDateTime
    op.create_table(
        "fhir_resource",
        sa.Column("row_id", sa.Integer(), nullable=False),
        sa.Column("resource_type", sa.String(), nullable=False),
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("current", sa.Boolean(), nullable=False),
        sa.Column("last_updated", utc(), nullable=False),
        sa.Column("identifier", sa.String(), nullable=True),
        sa.Column("content_hash", sa.String(), nullable=False),
        sa.Column("patient_id", sa.String(), nullable=True),
        sa.Column("code", sa.String(), nullable=True),
        sa.Column("effective", utc(), nullable=True),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("row_id"),
        sa.UniqueConstraint("resource_type", "id", "version_id", name="uq_fhir_resource_version"),
    )
    op.create_index(
        "uq_fhir_resource_identifier",
        "fhir_resource",
        ["resource_type", "identifier"],
        unique=True,
        sqlite_where=sa.text("current"),
        postgresql_where=sa.text("current"),
    )
    op.create_index("ix_fhir_resource_identifier", "fhir_resource", ["resource_type", "identifier"])
    op.create_index("ix_fhir_resource_current", "fhir_resource", ["resource_type", "id", "current"])
    op.create_index(
        "ix_fhir_resource_patient", "fhir_resource", ["resource_type", "patient_id", "effective"]
    )


def downgrade() -> None:
    op.drop_table("fhir_resource")
