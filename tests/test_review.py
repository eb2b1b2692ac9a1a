"""Every real result reaches the right patient (docs/contracts.md §4, §5): PID-3 as senders write
it, ambiguous matches, the review queue (link, discard, retention), ADT, and HL7 results in the
patient's FHIR record — through the real intake, service and store, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select

from gateway.app.errors import NotLinkable, ReviewClosed
from gateway.app.reads import RemsReads
from gateway.app.service import RemsService
from gateway.app.values import PatientNamed, Source
from gateway.mllp.intake import Hl7Intake, Received
from mappings.hl7v2.senders import SenderConfig, SenderDirectory
from rems_core.model import Identifier
from rems_core.registry import RegistryDocument
from rems_core.store import tables
from rems_core.store.fhir_repo import ResourceQuery
from rems_core.store.review_repo import ReviewFilter
from tests.conftest import committed, run
from tests.test_hl7_intake import errors, fixture
from tests.test_service import PHARMACY, PRESCRIBER

OID = "urn:oid:2.16.840.1.113883.3.999.1"
NOW = datetime(2021, 12, 5, 12, 0, tzinfo=UTC)
OPERATOR = Source("test", "operator")
ANY_SENDER = SenderDirectory(accept_unknown=True)


def registry(*patients: tuple[str, list[tuple[str, str]]]) -> RegistryDocument:
    entries = [
        {
            "id": handle,
            "identifiers": [{"system": s, "value": v} for s, v in identifiers],
            "treatment_start": "2021-06-01",
            "enrollment": {
                "by": PRESCRIBER,
                "date": "2021-11-20",
                "anc": {"value": "2100", "unit": "/uL", "drawn": "2021-11-18"},
            },
        }
        for handle, identifiers in patients
    ]
    return RegistryDocument.model_validate(
        {
            "prescribers": [{"npi": PRESCRIBER, "certified": True}],
            "pharmacies": [
                {"npi": PHARMACY, "enrollments": [{"setting": "outpatient", "certified": True}]}
            ],
            "patients": entries,
        }
    )


def load(service: RemsService, *patients: tuple[str, list[tuple[str, str]]]) -> dict[str, str]:
    return run(service.load_registry(registry(*patients), Source("test")))


def receive(
    service: RemsService, message: bytes, senders: SenderDirectory = ANY_SENDER
) -> Received:
    return run(Hl7Intake(service, senders).receive(message, NOW))


def oru(pid3: str, control: str, value: str = "0.8", drawn: str = "202112020800") -> bytes:
    segments = [
        f"MSH|^~\\&|LIS|GH|REMS|REMS|{drawn}||ORU^R01^ORU_R01|{control}|P|2.5.1",
        f"PID|1||{pid3}||DOE^JANE",
        f"OBR|1||ACC-{control}|57021-8^CBC^LN|||{drawn}",
        f"OBX|1|NM|751-8^Neutrophils^LN||{value}|10*3/uL|||||F|||{drawn}",
    ]
    return ("\r".join(segments) + "\r").encode()


def codes(received: Received) -> list[str]:
    return [e[3] for e in errors(received.ack)]


def err_text(received: Received, code: str) -> str:
    assert received.ack is not None
    return next(s.split("|")[8] for s in received.ack.split("\r") if f"|{code}^" in s)


def ancs(service: RemsService, patient_id: str) -> list[int | None]:
    found = committed(service, lambda store: store.anc_results(patient_id))
    return [a.anc for a in sorted(found, key=lambda a: a.drawn)]


def open_items(service: RemsService, **wanted: Any) -> list[dict[str, Any]]:
    items, _ = committed(service, lambda store: store.review_items(ReviewFilter(**wanted)))
    return items


# --- PID-3 as senders write it --------------------------------------------------------------


def test_a_namespace_alone_names_the_system_with_no_senders_file(service: RemsService) -> None:
    ids = load(service, ("P1", [("GH", "MRN123")]))
    received = receive(service, fixture("oru-v251-namespace-mrn.hl7"))
    assert received.code == "AA" and "PATIENT_NOT_MATCHED" not in codes(received)
    assert ancs(service, ids["P1"]) == [2100, 1900]


def test_namespace_as_system_false_keeps_colliding_namespaces_apart(service: RemsService) -> None:
    load(service, ("P1", [("GH", "MRN123")]))
    strict = SenderDirectory(
        senders=[
            SenderConfig(
                application="CLARIS LIS",
                facility="CLARIS REFERENCE LABS",
                namespace_as_system=False,
            )
        ]
    )
    received = receive(service, fixture("oru-v251-namespace-mrn.hl7"), strict)
    assert "PATIENT_NOT_MATCHED" in codes(received)
    assert "namespace_as_system" in err_text(received, "PATIENT_NOT_MATCHED")


def test_a_bare_value_needs_only_default_authority(service: RemsService) -> None:
    ids = load(service, ("P1", [(OID, "MRN123")]))
    bare = fixture("oru-v23-bare-mrn.hl7")
    unmatched = receive(service, bare)
    assert unmatched.outcome is not None and unmatched.outcome.review_id is not None
    assert unmatched.code == "AA" and unmatched.ack is not None
    text = unmatched.ack.split("\r")[1].split("|")[3]  # v2.3: MSA-3 is the finding's text
    assert "default_authority" in text and "MRN123" not in text and "****23" in text
    sender = SenderConfig(application="HEMALINK", facility="GH CORE LAB", default_authority=OID)
    matched = receive(
        service, bare.replace(b"HL0000457812", b"HL0000457813"), SenderDirectory(senders=[sender])
    )
    assert "PATIENT_NOT_MATCHED" not in codes(matched)
    assert ancs(service, ids["P1"])[-1] == 2392  # 4.6 × 52 % → 2392/µL, derived


def test_an_older_sender_is_matched_by_pid_2(service: RemsService) -> None:
    ids = load(service, ("P1", [(OID, "MRN123")]))
    received = receive(service, fixture("oru-v24-pid2-pid4.hl7"))
    assert received.code == "AA" and "PATIENT_NOT_MATCHED" not in codes(received)
    assert ancs(service, ids["P1"])[-1] == 2400


def test_identifiers_of_two_patients_file_nothing(service: RemsService) -> None:
    ids = load(
        service, ("P1", [(OID, "MRN123")]), ("P2", [("GH", "MRN777")]), ("P3", [("GH", "M3")])
    )
    received = receive(service, oru(f"MRN123^^^&{OID[8:]}&ISO~MRN777^^^GH^MR", "AMB1"))
    assert received.code == "AA" and "PATIENT_AMBIGUOUS" in codes(received)
    assert ancs(service, ids["P1"]) == [2100] and ancs(service, ids["P2"]) == [2100]
    (item,) = open_items(service, kind="ambiguous")
    assert sorted(item["patients"]) == sorted([ids["P1"], ids["P2"]])
    with pytest.raises(NotLinkable):
        run(service.link_review(item["id"], ids["P3"], None, OPERATOR, NOW))
    run(service.link_review(item["id"], ids["P2"], None, OPERATOR, NOW))
    assert ancs(service, ids["P2"]) == [2100, 800] and ancs(service, ids["P1"]) == [2100]


# --- the review queue -------------------------------------------------------------------------


def test_a_late_link_files_every_held_result_and_later_messages_match(
    service: RemsService, engine: Engine
) -> None:
    ids = load(service, ("P1", [(OID, "MRN123")]))
    receive(service, oru("X-778^^^NORTHLAB^MR", "L1", "0.8", "202112010800"))
    receive(service, oru("X-778^^^NORTHLAB^MR", "L2", "1.9", "202112030800"))
    first, second = open_items(service, kind="unmatched")
    linked = run(service.link_review(second["id"], ids["P1"], None, OPERATOR, NOW))
    assert linked.attached.added == [Identifier("NORTHLAB", "X-778")]
    assert sorted(linked.attached.filed) == sorted([first["id"], second["id"]])
    assert ancs(service, ids["P1"]) == [2100, 800, 1900]
    assert open_items(service) == []
    later = receive(service, oru("X-778^^^NORTHLAB^MR", "L3", "2.2", "202112040800"))
    assert "PATIENT_NOT_MATCHED" not in codes(later) and ancs(service, ids["P1"])[-1] == 2200
    with pytest.raises(ReviewClosed):
        run(service.link_review(first["id"], ids["P1"], None, OPERATOR, NOW))
    with engine.connect() as conn:
        audited = conn.execute(
            select(tables.AuditRecord.__table__.c.outcome).where(
                tables.AuditRecord.__table__.c.kind == "review"
            )
        ).scalars()
        assert sorted(audited) == ["held", "held", "linked", "linked"]


def test_a_bare_value_is_linked_with_the_system_the_operator_names(service: RemsService) -> None:
    ids = load(service, ("P1", [(OID, "MRN123")]))
    receive(service, oru("B-1234", "B1"))
    (item,) = open_items(service)
    assert item["candidates"][0]["rule"] == "unresolved"
    with pytest.raises(NotLinkable):
        run(service.link_review(item["id"], ids["P1"], Identifier("LAB", "other"), OPERATOR, NOW))
    run(service.link_review(item["id"], ids["P1"], Identifier("LAB", "B-1234"), OPERATOR, NOW))
    assert ancs(service, ids["P1"]) == [2100, 800]


def test_a_discard_keeps_who_and_why(service: RemsService) -> None:
    load(service, ("P1", [(OID, "MRN123")]))
    receive(service, oru("Z-1^^^ELSEWHERE", "D1"))
    (item,) = open_items(service)
    with pytest.raises(NotLinkable):
        run(service.discard_review(item["id"], " ", OPERATOR, NOW))
    run(service.discard_review(item["id"], "a research subject, not ours", OPERATOR, NOW))
    (closed,) = open_items(service, status="discarded")
    assert (closed["resolved_by"], closed["resolution"]) == (
        "operator",
        "a research subject, not ours",
    )


def test_results_of_nobody_are_purged_after_the_retention(
    service: RemsService, engine: Engine
) -> None:
    load(service, ("P1", [(OID, "MRN123")]))
    receive(service, oru("Z-2^^^ELSEWHERE", "R1"))
    run(service.run_scheduled(NOW + timedelta(days=29)))
    assert len(open_items(service)) == 1
    run(service.run_scheduled(NOW + timedelta(days=31)))
    (purged,) = open_items(service, status="purged")
    assert purged["results"] == [] and purged["candidates"] == []
    with engine.connect() as conn:
        raw = conn.execute(select(tables.Hl7MessageRow.__table__.c.raw)).scalar_one()
        audit = conn.execute(
            select(tables.AuditRecord.__table__).where(
                tables.AuditRecord.__table__.c.outcome == "purged"
            )
        ).one()
    assert raw == b"" and audit.input_ref == f"review/{purged['id']}"


def test_a_reused_control_id_is_held_for_review(service: RemsService) -> None:
    load(service, ("P1", [(OID, "MRN123")]))
    receive(service, oru(f"MRN123^^^&{OID[8:]}&ISO", "C1", "0.8"))
    conflict = receive(service, oru(f"MRN123^^^&{OID[8:]}&ISO", "C1", "1.8"))
    assert conflict.code == "AE" and "DUPLICATE_CONTROL_ID" in codes(conflict)
    (item,) = open_items(service, kind="conflict")
    assert item["message"] == "LIS|GH#C1" and item["purge_after"] is None


# --- ADT --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "adt-a01-admit.hl7",
        "adt-a04-register.hl7",
        "adt-a08-update.hl7",
        "adt-a28-add-person.hl7",
        "adt-a31-update-person.hl7",
    ],
)
def test_adt_adds_identifiers_of_a_known_patient(service: RemsService, name: str) -> None:
    ids = load(service, ("P1", [(OID, "MRN123")]))
    received = receive(service, fixture(name))
    assert received.code == "AA" and received.ack is not None
    assert received.ack.split("\r")[0].split("|")[8].startswith("ACK^A")
    patient = committed(
        service, lambda store: store.find_patient([Identifier("GHENT", "E7781234")])
    )
    assert patient is not None and patient.rems_id == ids["P1"]


def test_adt_of_a_patient_nobody_knows_stores_nothing_of_them(
    service: RemsService, engine: Engine
) -> None:
    load(service, ("P1", [(OID, "MRN999")]))
    received = receive(service, fixture("adt-a08-update.hl7"))
    assert received.code == "AA" and received.disposition == "ignored"
    with engine.connect() as conn:
        message = conn.execute(select(tables.Hl7MessageRow.__table__)).one()
        identifiers = conn.execute(select(tables.PatientIdentifierRow.__table__)).all()
    assert (message.raw, message.disposition, message.message_type) == (b"", "ignored", "ADT^A08")
    assert len(identifiers) == 1
    assert open_items(service) == []


def test_a_merge_brings_the_prior_identifiers_held_results_along(service: RemsService) -> None:
    ids = load(service, ("P1", [(OID, "MRN123")]))
    receive(service, oru(f"MRN987^^^&{OID[8:]}&ISO^MR", "M1", "0.8", "202112030800"))
    assert len(open_items(service)) == 1
    merged = receive(service, fixture("adt-a40-merge.hl7"))
    assert merged.code == "AA" and merged.disposition == "accepted"
    assert ancs(service, ids["P1"]) == [2100, 800] and open_items(service) == []


def test_a_merge_of_two_registry_patients_is_held(service: RemsService) -> None:
    ids = load(service, ("P1", [(OID, "MRN123")]), ("P2", [(OID, "MRN987")]))
    held = receive(service, fixture("adt-a40-merge.hl7"))
    assert held.code == "AA" and "PATIENT_MERGE_REVIEW" in codes(held)
    (item,) = open_items(service, kind="merge")
    assert item["patients"] == [ids["P1"], ids["P2"]]
    p2 = committed(service, lambda store: store.find_patient([Identifier(OID, "MRN987")]))
    assert p2 is not None and p2.rems_id == ids["P2"]  # nothing moved


# --- one record across channels ------------------------------------------------------------


def test_hl7_results_are_observations_of_the_patients_fhir_record(
    service: RemsService, reads: RemsReads
) -> None:
    ids = load(service, ("P1", [(OID, "MRN123")]))
    receive(service, oru(f"MRN123^^^&{OID[8:]}&ISO", "F1", "0.8"))
    corrected = oru(f"MRN123^^^&{OID[8:]}&ISO", "F2", "1.8").replace(b"|ACC-F2|", b"|ACC-F1|")
    receive(service, corrected.replace(b"||||F|||", b"||||C|||"))
    query = ResourceQuery("Observation", codes=["751-8"])
    found, total = run(reads.search_resources(query, PatientNamed(ids["P1"])))
    assert total == 1  # the current result; the one it corrected is no longer in the record
    (observation,) = found
    assert observation.id.startswith("lab-") and observation.body["status"] == "corrected"
    assert observation.body["valueQuantity"] == {
        "value": 1.8,
        "unit": "10*3/uL",
        "system": "http://unitsofmeasure.org",
        "code": "10*3/uL",
    }
    assert observation.body["meta"]["source"] == "urn:rems-gateway:mllp:LIS%7CGH#F2"
    assert observation.body["subject"] == {"reference": f"Patient/{ids['P1']}"}
    assert observation.body["effectiveDateTime"] == "2021-12-02T08:00:00+00:00"
    read = run(reads.resource("Observation", observation.id))
    assert read is not None and read.body == observation.body
    assert run(reads.resource("Observation", observation.id, 2)) is None
    assert run(reads.resource("Observation", "lab-999999999999")) is None
    assert run(reads.resource("Observation", "lab-" + "9" * 40)) is None
    by_identifier = PatientNamed(identifier=Identifier(OID, "MRN123"))
    _, again = run(reads.search_resources(query, by_identifier))
    assert again == 1
