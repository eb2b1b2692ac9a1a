"""HL7 v2 lab results in (docs/contracts.md §4): ORU mapping, ACK codes, duplicates, durable before ACK."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from gateway.app.service import RemsService
from gateway.app.values import Source
from gateway.mllp.intake import Hl7Intake
from mappings.hl7v2.ack import finding_codes
from mappings.hl7v2.senders import SenderConfig, SenderDirectory
from rems_core.store import tables
from tests.conftest import run
from tests.test_service import registry

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hl7"
NOW = datetime(2021, 12, 1, 15, 0, tzinfo=UTC)
LOCAL = SenderDirectory(
    accept_unknown=True,
    senders=[SenderConfig(application="LABSYS", facility="COUNTY", local_codes={"ANC": "751-8"})],
)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def segments(ack: str | None) -> list[list[str]]:
    assert ack is not None
    return [s.split("|") for s in ack.split("\r") if s]


def errors(ack: str | None) -> list[tuple[str, str, str, str]]:
    """(location, HL7 0357 code, severity, our code) of each ERR: v2.5+ ERR-2..5, older ERR-1."""
    found = []
    for s in segments(ack):
        if s[0] == "ERR" and len(s) > 5:
            found.append((s[2], s[3].split("^")[0], s[4], s[5].split("^")[0]))
        elif s[0] == "ERR":
            *location, code = s[1].split("^")
            found.append(("^".join(location), code.split("&")[0], "E", ""))
    return found


def count(engine: Engine, table: type) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table.__table__)).scalar_one()


@pytest.fixture
def intake(service: RemsService) -> Hl7Intake:
    run(service.load_registry(registry(enrolled_on="2021-11-20"), Source("test")))
    return Hl7Intake(service, LOCAL)


def test_an_anc_result_is_stored_before_its_ack_and_warnings_become_err(
    intake: Hl7Intake, engine: Engine
) -> None:
    received = run(intake.receive(fixture("oru-v251-loinc-anc.hl7"), NOW))
    assert received.code == "AA"
    msa = segments(received.ack)[1]
    assert msa[:3] == ["MSA", "AA", "MSG0001"]
    assert ("OBX^1^5", "0", "W", "ANC_BELOW_THRESHOLD") in errors(received.ack)
    assert received.outcome is not None and [r.anc for r in received.outcome.results] == [800]
    with engine.connect() as conn:
        stored = conn.execute(select(tables.Hl7MessageRow.__table__)).one()
    assert stored.ack == received.ack and stored.disposition == "accepted"


def test_a_resend_gets_the_stored_ack_and_is_not_processed_twice(
    intake: Hl7Intake, engine: Engine
) -> None:
    first = run(intake.receive(fixture("oru-v251-loinc-anc.hl7"), NOW))
    audit_before, ancs_before = (
        count(engine, tables.AuditRecord),
        count(engine, tables.AncResultRow),
    )
    resent = fixture("oru-v251-loinc-anc.hl7").replace(
        b"20211201081500-0500", b"20211201091500-0500"
    )
    again = run(intake.receive(resent, NOW))
    assert again.ack == first.ack
    assert (count(engine, tables.AuditRecord), count(engine, tables.AncResultRow)) == (
        audit_before,
        ancs_before,
    )


def test_one_control_id_with_other_content_is_a_conflict_held_for_review(
    intake: Hl7Intake, engine: Engine
) -> None:
    run(intake.receive(fixture("oru-v251-loinc-anc.hl7"), NOW))
    other = fixture("oru-v251-loinc-anc.hl7").replace(b"||0.8|", b"||0.9|")
    received = run(intake.receive(other, NOW))
    assert received.code == "AE" and ("MSH^1^10", "205", "E", "DUPLICATE_CONTROL_ID") in errors(
        received.ack
    )
    with engine.connect() as conn:
        dispositions = (
            conn.execute(select(tables.Hl7MessageRow.__table__.c.disposition)).scalars().all()
        )
    assert sorted(dispositions) == ["accepted", "conflict"]


@pytest.mark.parametrize(
    ("change", "code", "location", "err3"),
    [
        ((b"ORU^R01^ORU_R01", b"OML^O21^OML_O21"), "AR", "MSH^1^9", "200"),
        ((b"ORU^R01^ORU_R01", b"ORU^R30^ORU_R30"), "AR", "MSH^1^9", "201"),
        ((b"|MSG0001|P|", b"|MSG0001|X|"), "AR", "MSH^1^11", "202"),
        ((b"|P|2.5.1", b"|P|2.2"), "AR", "MSH^1^12", "203"),
    ],
)
def test_unsupported_messages_are_rejected_with_table_0357_codes(
    intake: Hl7Intake, change: tuple[bytes, bytes], code: str, location: str, err3: str
) -> None:
    received = run(intake.receive(fixture("oru-v251-loinc-anc.hl7").replace(*change), NOW))
    assert received.code == code and (location, err3, "E", "") in errors(received.ack)


def test_a_truncated_message_is_an_ae_naming_the_missing_field(intake: Hl7Intake) -> None:
    received = run(intake.receive(b"MSH|^~\\&|LAB|GH|REMS|REMS|20211201", NOW))
    assert received.code == "AE" and errors(received.ack)[0][1] == "101"


def test_a_result_for_an_unknown_patient_is_kept_for_review(
    intake: Hl7Intake, engine: Engine
) -> None:
    unknown = fixture("oru-v251-loinc-anc.hl7").replace(b"MRN123", b"MRN404")
    received = run(intake.receive(unknown, NOW))
    assert received.code == "AA" and ("PID^1^3", "204", "W", "PATIENT_NOT_MATCHED") in errors(
        received.ack
    )
    text = next(e for e in received.ack.split("\r") if "PATIENT_NOT_MATCHED" in e).split("|")[8]
    assert "MRN404" not in text and "****04" in text  # the candidate tried, masked
    with engine.connect() as conn:
        kept = conn.execute(select(tables.ObservationRow.__table__.c.patient_id)).scalars().all()
        held = conn.execute(select(tables.ReviewItemRow.__table__)).one()
    assert None not in kept  # nobody's file holds it; the review queue does
    assert (held.kind, held.message) == ("unmatched", "LAB|GENERAL HOSP#MSG0001")
    assert [c["value"] for c in held.candidates] == ["MRN404"]


def test_a_comparator_is_flagged_never_used(intake: Hl7Intake) -> None:
    received = run(intake.receive(fixture("oru-sn-comparator.hl7"), NOW))
    assert received.code == "AA" and ("OBX^1^5", "102", "W", "ANC_VALUE_INVALID") in errors(
        received.ack
    )


def test_derivation_from_wbc_and_differential_with_loinc_in_the_alternate_triplet(
    intake: Hl7Intake,
) -> None:
    received = run(intake.receive(fixture("oru-v27-wbc-differential.hl7"), NOW))
    assert received.outcome is not None
    assert [(r.anc, r.derived) for r in received.outcome.results] == [(1000, True)]


def test_a_senders_local_code_is_mapped_and_old_versions_get_msa_3(intake: Hl7Intake) -> None:
    received = run(intake.receive(fixture("oru-v23-local-code.hl7"), NOW))
    assert received.outcome is not None and [r.anc for r in received.outcome.results] == [2100]
    assert segments(received.ack)[0][11] == "2.3"


def test_a_message_without_relevant_results_is_kept_for_replay(
    intake: Hl7Intake, engine: Engine
) -> None:
    received = run(intake.receive(fixture("oru-no-anc.hl7"), NOW))
    assert received.code == "AA" and errors(received.ack) == []
    with engine.connect() as conn:
        row = conn.execute(select(tables.Hl7MessageRow.__table__)).one()
    assert row.disposition == "no_results" and row.purge_after is not None


@pytest.mark.parametrize(
    ("accept", "answered", "msa"), [("AL", True, "CA"), ("NE", False, None), ("ER", False, None)]
)
def test_enhanced_mode_answers_as_msh_15_asks(
    intake: Hl7Intake, accept: str, answered: bool, msa: str | None
) -> None:
    message = fixture("oru-v251-loinc-anc.hl7").replace(
        b"|P|2.5.1", b"|P|2.5.1|||" + accept.encode() + b"|NE"
    )
    received = run(intake.receive(message, NOW))
    assert (received.ack is not None) is answered
    if msa:
        assert segments(received.ack)[1][1] == msa


def test_an_unmapped_code_that_looks_like_neutrophils_is_flagged_and_kept(
    intake: Hl7Intake, engine: Engine
) -> None:
    unmapped = fixture("oru-v251-loinc-anc.hl7").replace(
        b"751-8^Neutrophils [#/volume] in Blood by Automated count^LN", b"NEUTABS^Neutrophils abs^L"
    )
    received = run(
        Hl7Intake(intake.service, SenderDirectory(accept_unknown=True)).receive(unmapped, NOW)
    )
    assert received.code == "AA" and ("OBX^1^3", "103", "W", "UNMAPPED_CANDIDATE") in errors(
        received.ack
    )
    with engine.connect() as conn:
        row = conn.execute(select(tables.Hl7MessageRow.__table__)).one()
    assert row.disposition == "no_results" and row.purge_after is not None  # kept for a replay


def test_an_unknown_sender_is_refused_unless_accepted(intake: Hl7Intake) -> None:
    message = fixture("oru-v251-loinc-anc.hl7")
    closed = SenderDirectory(senders=LOCAL.senders)  # accept_unknown defaults to False
    received = run(Hl7Intake(intake.service, closed).receive(message, NOW))
    assert received.code == "AR" and ("MSH^1^3", "204", "E", "UNKNOWN_SENDER") in errors(
        received.ack
    )


def test_a_strict_sender_gets_hl7apy_validation(intake: Hl7Intake) -> None:
    strict = SenderDirectory(
        senders=[SenderConfig(application="LAB", facility="GH", validation="strict")]
    )
    checked = Hl7Intake(intake.service, strict)
    rejected = run(checked.receive(fixture("oru-sn-comparator.hl7"), NOW))  # PID-5 missing
    assert rejected.code == "AE" and errors(rejected.ack)[0][3] == "STRICT_VALIDATION"
    valid = fixture("oru-v251-loinc-anc.hl7").replace(b"|LAB|GENERAL HOSP|", b"|LAB|GH|")
    assert run(checked.receive(valid, NOW)).code == "AA"


# --- processing id (MSH-11) -------------------------------------------------------------------


@pytest.mark.parametrize("processing_id", [b"T", b"D"])
def test_training_and_debug_messages_never_reach_a_production_patients_file(
    intake: Hl7Intake, engine: Engine, processing_id: bytes
) -> None:
    before = count(engine, tables.ObservationRow)
    message = fixture("oru-v251-loinc-anc.hl7").replace(
        b"|MSG0001|P|", b"|MSG0001|" + processing_id + b"|"
    )
    received = run(intake.receive(message, NOW))
    assert received.code == "AR" and ("MSH^1^11", "202", "E", "") in errors(received.ack)
    assert count(engine, tables.ObservationRow) == before
    assert count(engine, tables.Hl7MessageRow) == 0


def test_a_training_gateway_takes_training_messages_only(
    service: RemsService, engine: Engine
) -> None:
    run(service.load_registry(registry(enrolled_on="2021-11-20"), Source("test")))
    training = Hl7Intake(service, LOCAL, processing_id="T")
    anc = fixture("oru-v251-loinc-anc.hl7")
    refused = run(training.receive(anc, NOW))
    assert refused.code == "AR" and ("MSH^1^11", "202", "E", "") in errors(refused.ack)
    taken = run(training.receive(anc.replace(b"|MSG0001|P|", b"|MSG0001|T|"), NOW))
    assert taken.code == "AA" and count(engine, tables.Hl7MessageRow) == 1


def test_an_empty_processing_id_is_p_with_a_warning_unless_the_sender_must_send_one(
    service: RemsService,
) -> None:
    run(service.load_registry(registry(enrolled_on="2021-11-20"), Source("test")))
    empty = fixture("oru-v251-loinc-anc.hl7").replace(b"|MSG0001|P|", b"|MSG0001||")
    lenient = run(Hl7Intake(service, LOCAL).receive(empty, NOW))
    assert lenient.code == "AA"
    assert ("MSH^1^11", "101", "W", "PROCESSING_ID_MISSING") in errors(lenient.ack)
    strict = SenderDirectory(
        senders=[
            SenderConfig(application="LAB", facility="GENERAL HOSP", require_processing_id=True)
        ]
    )
    again = empty.replace(b"|MSG0001|", b"|MSG0002|")
    refused = run(Hl7Intake(service, strict).receive(again, NOW))
    assert refused.code == "AE" and ("MSH^1^11", "101", "E", "") in errors(refused.ack)


@pytest.mark.parametrize("system", [b"LN", b"LOINC", b"2.16.840.1.113883.6.1", b"pCLOCD", b"L"])
def test_loinc_is_read_under_every_name_senders_give_it(intake: Hl7Intake, system: bytes) -> None:
    named = b"in Blood by Automated count^" + system + b"|"
    message = fixture("oru-v251-loinc-anc.hl7").replace(b"in Blood by Automated count^LN|", named)
    assert named in message
    received = run(intake.receive(message, NOW))
    if system == b"L":  # a local code: mapped per sender, flagged until it is
        assert received.disposition == "no_results"
        assert ("OBX^1^3", "103", "W", "UNMAPPED_CANDIDATE") in errors(received.ack)
    else:
        assert received.outcome is not None
        assert [r.anc for r in received.outcome.results] == [800]


def test_our_codes_are_machine_readable_in_acks_before_v2_5(intake: Hl7Intake) -> None:
    """v2.3: no ERR-5; our code is ERR-1's alternate identifier, and MSA-3 begins with it."""
    received = run(
        intake.receive(fixture("oru-v23-local-code.hl7").replace(b"MRN123", b"MRN404"), NOW)
    )
    assert received.ack is not None
    segments = received.ack.split("\r")
    assert segments[1].split("|")[3].startswith("PATIENT_NOT_MATCHED: ")
    (err,) = [s for s in segments if s.startswith("ERR|")]
    assert err.split("|")[1].endswith("^204&Unknown key identifier&HL70357&PATIENT_NOT_MATCHED&&L")
    assert finding_codes(received.ack) == ["PATIENT_NOT_MATCHED"]


def test_units_and_codes_as_labs_write_them_are_answered_with_their_warnings(
    service: RemsService,
) -> None:
    """fixtures/hl7/README.md, "Units and codes as labs write them"."""
    run(service.load_registry(registry(enrolled_on="2021-11-20"), Source("test")))
    mapped = SenderDirectory(
        accept_unknown=True,
        senders=[SenderConfig(application="CLINILAB", local_codes={"NEUTABS": "751-8"})],
    )
    intake = Hl7Intake(service, mapped)

    def answer(name: str) -> tuple[list[int | None], list[tuple[str, str, str, str]]]:
        received = run(intake.receive(fixture(name), NOW))
        assert received.code == "AA" and received.outcome is not None
        return [r.anc for r in received.outcome.results], errors(received.ack)

    assert answer("oru-v23-reflab-escaped-unit.hl7") == ([1900], [])
    assert answer("oru-v25-analyser-unescaped-caret.hl7") == (
        [2400],
        [
            ("OBX^1^6", "102", "W", "UNIT_UNESCAPED_CARET"),
            ("OBX^2^6", "102", "W", "UNIT_UNESCAPED_CARET"),
        ],
    )
    assert answer("oru-v251-lis-code-text-mismatch.hl7") == (
        [2100],
        [
            ("OBX^1^3", "103", "W", "CODE_TEXT_MISMATCH"),
            ("OBX^2^3", "103", "W", "CODE_TEXT_MISMATCH"),
        ],
    )
    assert sorted(answer("oru-v24-micro-sign-units.hl7")[0]) == [2573, 2650]
