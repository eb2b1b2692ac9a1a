"""PreparedInsert stores exactly what a Core INSERT stores and PreparedQuery reads what a Core
SELECT reads (times, JSON, booleans), on both databases, and a driver error still arrives as
SQLAlchemy's DBAPIError."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, bindparam, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from rems_core.model import LabResult, ResultStatus
from rems_core.store import tables
from rems_core.store.prepared import PreparedInsert, PreparedQuery, QueryFamily
from rems_core.store.repo import observation_row

observation_t = tables.ObservationRow.__table__
MOMENT = datetime(2022, 3, 2, 8, 0, 0, 123456, tzinfo=UTC)


def rows() -> list[dict]:
    result = LabResult("751-8", "0.8", "10*3/uL", MOMENT, ResultStatus.FINAL, "ACC-1")
    return [
        observation_row(None, result, MOMENT + timedelta(hours=1), "mllp"),
        observation_row(None, result, MOMENT, "fhir", current=False),
    ]


def stored(engine: Engine) -> list[tuple]:
    with engine.connect() as conn:
        found = conn.execute(select(observation_t).order_by(observation_t.c.id)).all()
    return [tuple(r)[1:] for r in found]  # without the generated id


def test_prepared_rows_read_back_like_core_rows(engine: Engine) -> None:
    prepared = PreparedInsert(insert(observation_t))
    with engine.begin() as conn:
        prepared.run(conn, rows())  # several rows: one executemany
        prepared.run(conn, rows()[:1])  # one row
        conn.execute(insert(observation_t), rows())
        conn.execute(insert(observation_t), rows()[:1])
    back = stored(engine)
    assert back[:3] == back[3:]
    assert back[0][1] == "ACC-1"
    assert back[0][6] == MOMENT and back[0][6].tzinfo is not None
    assert [r[8] for r in back[:3]] == [True, False, True]


def test_prepared_rows_are_stored_as_the_same_text_as_core_rows(engine: Engine) -> None:
    """Not only read back alike: JSON null, empty and full lists and times are the same text."""
    audit_t = tables.AuditRecord.__table__
    records = [audit_row(1, []), audit_row(2, ["ANC_UNIT_SUSPECT"])]
    with engine.begin() as conn:
        conn.execute(insert(observation_t), rows())
        PreparedInsert(insert(observation_t)).run(conn, rows())
        conn.execute(insert(audit_t), records)
        PreparedInsert(insert(audit_t)).run(conn, [r | {"seq": r["seq"] + 2} for r in records])
        observed = conn.exec_driver_sql(
            "SELECT CAST(value AS TEXT), CAST(drawn AS TEXT) FROM observation ORDER BY id"
        ).all()
        audited = conn.exec_driver_sql(
            "SELECT CAST(reasons AS TEXT), CAST(warnings AS TEXT), CAST(at AS TEXT)"
            " FROM audit_record ORDER BY seq"
        ).all()
    assert observed[:2] == observed[2:]
    assert audited[:2] == audited[2:]


def audit_row(seq: int, warnings: list[str]) -> dict:
    return {
        "seq": seq,
        "at": MOMENT,
        "clinical_at": MOMENT,
        "kind": "lab",
        "channel": "mllp",
        "actor": "LAB",
        "subject": None,
        "input_hash": "0" * 64,
        "input_ref": "",
        "outcome": "stored",
        "rule_pack": "",
        "rule_pack_version": "",
        "reasons": [],
        "warnings": warnings,
        "prev_hash": "0" * 64,
        "hash": str(seq) * 64,
    }


def test_rows_of_different_shapes_go_one_by_one(engine: Engine) -> None:
    first, second = rows()
    del second["patient_id"]  # the column's default (NULL) fills it
    with engine.begin() as conn:
        PreparedInsert(insert(observation_t)).run(conn, [first, second])
    assert [r[9] for r in stored(engine)] == ["mllp", "fhir"]  # the channel


def test_a_driver_error_is_a_dbapi_error(engine: Engine) -> None:
    bad = rows()[0] | {"patient_id": "no-such-patient"}  # foreign key
    with pytest.raises(DBAPIError), engine.begin() as conn:
        PreparedInsert(insert(observation_t)).run(conn, [bad])


def test_prepared_queries_read_what_core_reads(engine: Engine) -> None:
    by_patient = select(observation_t).where(
        observation_t.c.patient_id.is_(None), observation_t.c.current.is_(True)
    )
    with engine.begin() as conn:
        conn.execute(insert(observation_t), rows())
        prepared = PreparedQuery(by_patient.order_by(observation_t.c.id)).rows(conn)
        core = conn.execute(by_patient.order_by(observation_t.c.id)).all()
    assert [tuple(r) for r in prepared] == [tuple(r) for r in core]
    assert prepared[0].drawn == MOMENT and prepared[0].drawn.tzinfo is not None
    assert prepared[0].channel == "mllp"
    assert prepared[0].current is True


def test_a_query_family_binds_list_values_like_their_column(engine: Engine) -> None:
    """Times in an IN list are converted as the column stores them (else nothing matches)."""
    drawn_in = QueryFamily(
        lambda n: select(observation_t.c.channel).where(
            observation_t.c.drawn.in_(
                [bindparam(f"d{i}", type_=observation_t.c.drawn.type) for i in range(n)]
            )
        )
    )
    other = MOMENT + timedelta(days=3)
    with engine.begin() as conn:
        conn.execute(insert(observation_t), rows())
        one = drawn_in(1).rows(conn, {"d0": MOMENT})
        two = drawn_in(2).rows(conn, {"d0": other, "d1": MOMENT})
        none = drawn_in(1).rows(conn, {"d0": other})
    assert sorted(r.channel for r in one) == sorted(r.channel for r in two) == ["fhir", "mllp"]
    assert none == []


def test_a_prepared_update_counts_the_rows_it_changed(engine: Engine) -> None:
    retire = PreparedQuery(
        update(observation_t)
        .where(observation_t.c.channel == bindparam("of_channel"))
        .values(current=False)
    )
    with engine.begin() as conn:
        conn.execute(insert(observation_t), rows())
        assert retire.run(conn, {"of_channel": "mllp"}) == 1
    assert [r[8] for r in stored(engine)] == [False, False]


def test_outside_a_transaction_the_connection_begins_one(engine: Engine) -> None:
    """Never the driver's autocommit: what a prepared statement wrote is undone by a rollback."""
    with engine.connect() as conn:
        PreparedInsert(insert(observation_t)).run(conn, rows())
        assert len(PreparedQuery(select(observation_t.c.id)).rows(conn)) == 2
        conn.rollback()
    assert stored(engine) == []


def test_a_unique_violation_is_an_integrity_error(engine: Engine) -> None:
    first = rows()[0] | {"id": 7}
    with pytest.raises(IntegrityError), engine.begin() as conn:
        PreparedInsert(insert(observation_t)).run(conn, [first])
        PreparedInsert(insert(observation_t)).run(conn, [first])
    assert stored(engine) == []
