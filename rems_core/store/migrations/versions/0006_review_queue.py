"""The review queue, client Patients, who created a FHIR resource, and where a lab result not
sent as a FHIR Observation came from (issue 12).

Results kept without a patient move from the observation table into review items, one per
arrival (channel and time), so that a link or a discard sees them.

Revision ID: 0006
Revises: 0005
"""

import hashlib
import json
from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from alembic import op

import rems_core.store.tables

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RETENTION_DAYS = 30  # the review_retention_days default


def upgrade() -> None:
    utc = rems_core.store.tables.UtcDateTime
    op.add_column("fhir_resource", sa.Column("owner", sa.String(), nullable=True))
    op.add_column(
        "observation", sa.Column("source", sa.String(), nullable=False, server_default="")
    )
    op.create_table(
        "fhir_patient_identifier",
        sa.Column("resource_id", sa.String(), nullable=False),
        sa.Column("system", sa.String(), nullable=False),
        sa.Column("value", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("resource_id", "system", "value"),
    )
    op.create_index("ix_fhir_patient_identifier", "fhir_patient_identifier", ["system", "value"])
    op.create_table(
        "review_item",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("sender", sa.String(), nullable=False),
        sa.Column("received", utc(), nullable=False),
        sa.Column("candidates", sa.JSON(), nullable=True),
        sa.Column("results", sa.JSON(), nullable=True),
        sa.Column("findings", sa.JSON(), nullable=True),
        sa.Column("patients", sa.JSON(), nullable=True),
        sa.Column("message", sa.String(), nullable=True),
        sa.Column("resources", sa.JSON(), nullable=True),
        sa.Column("purge_after", utc(), nullable=True),
        sa.Column("resolved_at", utc(), nullable=True),
        sa.Column("resolved_by", sa.String(), nullable=True),
        sa.Column("resolution", sa.String(), nullable=False),
        sa.Column("patient_id", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_review_item_open", "review_item", ["status", "kind", "received"])
    op.create_index("ix_review_item_purge", "review_item", ["status", "purge_after"])
    op.create_table(
        "review_key",
        sa.Column("review_id", sa.String(), nullable=False),
        sa.Column("system", sa.String(), nullable=False),
        sa.Column("value", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(["review_id"], ["review_item.id"]),
        sa.PrimaryKeyConstraint("review_id", "system", "value"),
    )
    op.create_index("ix_review_key_identifier", "review_key", ["system", "value"])
    _move_unmatched_observations()
    with op.batch_alter_table("observation") as batch:
        batch.drop_column("unmatched_identifiers")


def _move_unmatched_observations() -> None:
    conn = op.get_bind()
    observation = sa.table(
        "observation",
        sa.column("id", sa.Integer),
        sa.column("patient_id", sa.String),
        sa.column("unmatched_identifiers", sa.JSON),
        sa.column("specimen_key", sa.String),
        sa.column("code", sa.String),
        sa.column("value", sa.String),
        sa.column("unit", sa.String),
        sa.column("status", sa.String),
        sa.column("drawn", rems_core.store.tables.UtcDateTime()),
        sa.column("received", rems_core.store.tables.UtcDateTime()),
        sa.column("channel", sa.String),
    )
    rows = conn.execute(
        sa.select(observation).where(observation.c.patient_id.is_(None)).order_by(observation.c.id)
    ).all()
    items: dict[tuple[str, str], dict[str, object]] = {}
    for row in rows:
        arrival = (row.channel, row.received.isoformat())
        item = items.setdefault(arrival, _item(row))
        item["results"].append(  # type: ignore[attr-defined]
            {
                "code": row.code,
                "value": row.value,
                "unit": row.unit,
                "status": row.status,
                "drawn": row.drawn.isoformat(),
                "specimen": None if row.specimen_key.startswith("drawn:") else row.specimen_key,
            }
        )
    reflected = sa.Table("review_item", sa.MetaData(), autoload_with=conn)
    keys = sa.Table("review_key", sa.MetaData(), autoload_with=conn)
    for item in items.values():
        conn.execute(sa.insert(reflected).values(**item))
        identifiers = {(c["system"], c["value"]) for c in item["candidates"]}  # type: ignore[attr-defined]
        for system, value in sorted(identifiers):
            conn.execute(sa.insert(keys).values(review_id=item["id"], system=system, value=value))
    conn.execute(sa.delete(observation).where(observation.c.patient_id.is_(None)))


def _item(row: sa.Row) -> dict[str, object]:
    identifiers = row.unmatched_identifiers or []
    if isinstance(identifiers, str):
        identifiers = json.loads(identifiers)
    digest = hashlib.sha256(f"{row.channel}|{row.received.isoformat()}|{row.id}".encode())
    return {
        "id": f"rev-{digest.hexdigest()[:16]}",
        "kind": "unmatched",
        "status": "open",
        "channel": row.channel,
        "sender": "",
        "received": row.received,
        "candidates": [
            {"value": i["value"], "field": "", "rule": "fhir", "system": i["system"]}
            for i in identifiers
        ],
        "results": [],
        "findings": [],
        "patients": [],
        "resources": [],
        "purge_after": row.received + timedelta(days=RETENTION_DAYS),
        "resolution": "",
    }


def downgrade() -> None:
    with op.batch_alter_table("observation") as batch:
        batch.add_column(sa.Column("unmatched_identifiers", sa.JSON(), nullable=True))
        batch.drop_column("source")
    op.drop_table("review_key")
    op.drop_table("review_item")
    op.drop_table("fhir_patient_identifier")
    with op.batch_alter_table("fhir_resource") as batch:
        batch.drop_column("owner")
