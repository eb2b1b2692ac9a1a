"""The console's reads of the store (rems_core/store/console_repo.py, docs/contracts.md §8): the
stored HL7 messages by sender, type, disposition and time, a page of them, the decisions, the
patients by an identifier's value, and the PSFs as judged — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from gateway.app.service import RemsService
from rems_core.store.console_repo import DecisionFilter, MessageQuery
from rems_core.store.repo import Store
from tests.conftest import committed
from tests.console_data import MRN, seed
from tests.test_review import NOW


def controls(service: RemsService, **wanted: object) -> tuple[list[str], int]:
    rows, total = committed(service, lambda store: store.messages(MessageQuery(**wanted)))
    return [r["control_id"] for r in rows], total


def test_messages_are_filtered_and_paged_newest_first(service: RemsService) -> None:
    seed(service)
    assert controls(service) == (["C-4", "C-3", "C-2", "C-1"], 4)
    assert controls(service, disposition="unmatched") == (["C-4"], 1)
    assert controls(service, sender="LIS|GH", message_type="ORU^R01") == (
        ["C-4", "C-3", "C-2", "C-1"],
        4,
    )
    assert controls(service, sender="OTHER|LAB") == ([], 0)
    assert controls(service, message_type="ADT") == ([], 0)
    assert controls(service, message_type="OR_") == ([], 0)  # a prefix, not a pattern
    assert controls(service, received_from=NOW, received_to=NOW + timedelta(hours=1))[1] == 4
    assert controls(service, received_from=NOW + timedelta(seconds=1))[1] == 0
    assert controls(service, count=3, offset=2) == (["C-2", "C-1"], 4)
    row = committed(service, lambda store: store.messages(MessageQuery(count=1)))[0][0]
    assert "raw" not in row and "ack" not in row  # a listing carries no message text
    full = committed(service, lambda store: store.message_row(row["id"]))
    assert full is not None and full["raw"].startswith(b"MSH|") and full["ack"].startswith("MSH|")


def test_decisions_patients_and_psfs_for_the_console(service: RemsService) -> None:
    seeded = seed(service)

    def read(store: Store) -> tuple[object, ...]:
        return (
            store.decisions(DecisionFilter(patient_id=seeded.patient))[1],
            store.decisions(DecisionFilter(outcome=seeded.outcome))[1],
            store.decisions(DecisionFilter(outcome="not_applicable"))[1],
            store.patients_with_value(MRN),
            store.patients_with_value(MRN, "GH"),
            store.patients_with_value(MRN, "NIST"),
            [p["type"] for p in store.psf_rows(seeded.patient)],
            store.message_senders(),
            store.message_number("LIS|GH", "C-3") == seeded.hostile_message,
            store.message_number("LIS|GH", "C-9"),
        )

    assert committed(service, read) == (
        1,
        1,
        0,
        [seeded.patient],
        [seeded.patient],
        [],
        ["enrollment"],
        ["LIS|GH"],
        True,
        None,
    )
