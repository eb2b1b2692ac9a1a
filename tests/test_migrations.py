"""The migrations make exactly the tables the code declares, and issue 12's moves the results kept
without a patient into the review queue, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlmodel import SQLModel

from rems_core.model import Identifier
from rems_core.store import tables  # noqa: F401  (the tables register with SQLModel.metadata)
from rems_core.store.db import upgrade
from rems_core.store.repo import Store
from rems_core.store.review_repo import ReviewFilter


def test_the_migrated_schema_is_the_declared_one(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_results_kept_without_a_patient_become_review_items(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    upgrade(url, "0005")
    engine = create_engine(url)
    drawn = datetime(2022, 3, 1, 8, tzinfo=UTC).replace(tzinfo=None).isoformat(" ")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO observation (patient_id, unmatched_identifiers, specimen_key, code,"
                " value, unit, status, drawn, received, current, channel) VALUES (NULL,"
                " :who, 'ACC-9', '751-8', '0.8', '10*3/uL', 'final', :drawn, :drawn, 1, 'mllp')"
            ),
            {"who": '[{"system": "urn:oid:1.2.3", "value": "MRN9"}]', "drawn": drawn},
        )
    upgrade(url)
    try:
        assert "unmatched_identifiers" not in {
            c["name"] for c in inspect(engine).get_columns("observation")
        }
        with engine.connect() as conn:
            store = Store(conn)
            (item,), total = store.review_items(ReviewFilter())
            held = store.held_for([Identifier("urn:oid:1.2.3", "MRN9")])
            rows = conn.execute(text("SELECT count(*) FROM observation")).scalar_one()
    finally:
        engine.dispose()
    assert total == 1 and item["kind"] == "unmatched" and rows == 0
    assert [r["value"] for r in item["results"]] == ["0.8"]
    assert [h["id"] for h in held] == [item["id"]]
