"""Wholesalers and distributors, and dated pharmacy certifications (issue 17: the certification
lookup and the shipment check, docs/rules.md §10).

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pharmacy_enrollment") as batch:
        batch.add_column(sa.Column("certified_on", sa.Date(), nullable=True))
        batch.add_column(sa.Column("recertify_by", sa.Date(), nullable=True))
    op.create_table(
        "trade_partner",
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("handle", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("enrolled_on", sa.Date(), nullable=True),
        sa.Column("certified", sa.Boolean(), nullable=False),
        sa.Column("certified_on", sa.Date(), nullable=True),
        sa.Column("recertify_by", sa.Date(), nullable=True),
        sa.PrimaryKeyConstraint("kind", "handle"),
    )
    op.create_table(
        "trade_partner_identifier",
        sa.Column("system", sa.String(), nullable=False),
        sa.Column("value", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("handle", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(["kind", "handle"], ["trade_partner.kind", "trade_partner.handle"]),
        sa.PrimaryKeyConstraint("system", "value"),
    )
    op.create_index(
        "ix_trade_partner_identifier_owner", "trade_partner_identifier", ["kind", "handle"]
    )


def downgrade() -> None:
    op.drop_index("ix_trade_partner_identifier_owner", table_name="trade_partner_identifier")
    op.drop_table("trade_partner_identifier")
    op.drop_table("trade_partner")
    with op.batch_alter_table("pharmacy_enrollment") as batch:
        batch.drop_column("recertify_by")
        batch.drop_column("certified_on")
