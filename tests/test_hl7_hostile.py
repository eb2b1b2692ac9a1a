"""Broken and hostile HL7 v2 input (issue 11): content errors are AE or warnings, never AR 207;
limits answer AE naming the limit; the ACK is well-formed whatever it echoes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from gateway.mllp.intake import Hl7Intake
from mappings.hl7v2 import limits as limits_check
from mappings.hl7v2.senders import Hl7Limits, SenderDirectory
from mappings.hl7v2.tokenizer import Segment
from rems_core.store import tables
from tests.conftest import postgresql_only, run
from tests.test_hl7_intake import LOCAL, NOW, count, errors, fixture, intake, segments

__all__ = ["intake"]  # the fixture, shared with tests/test_hl7_intake.py

ORU = fixture("oru-v251-loinc-anc.hl7")
ANC_OBX = (
    b"OBX|1|NM|751-8^Neutrophils [#/volume] in Blood by Automated count^LN||0.8|10*3/uL^^UCUM"
    b"|1.5-7.8|L|||F|||20211201071500-0500\r"
)


def with_field(segment: bytes, n: int, value: bytes, message: bytes = ORU) -> bytes:
    """``message`` with field n of its first ``segment`` replaced (MSH counts its MSH-1)."""
    lines = message.split(b"\r")
    for i, line in enumerate(lines):
        if line.startswith(segment):
            fields = line.split(b"|")
            index = n - 1 if segment == b"MSH" else n
            fields += [b""] * (index + 1 - len(fields))
            fields[index] = value
            lines[i] = b"|".join(fields)
            break
    return b"\r".join(lines)


def obx_value(value: bytes) -> bytes:
    return ORU.replace(b"||0.8|", b"||" + value + b"|")


ENROLLMENT_ANC = 2100  # the registry's enrollment ANC (tests/test_service.py)


def anc_rows(engine: Engine) -> list[tables.AncResultRow]:
    with engine.connect() as conn:
        return list(conn.execute(select(tables.AncResultRow.__table__)).all())


# --- the same result twice in one message (reproduction 2) -------------------------------------


def test_the_same_anc_twice_in_one_message_is_one_result_stored_once(
    intake: Hl7Intake, engine: Engine
) -> None:
    twice = ORU.replace(ANC_OBX, ANC_OBX + ANC_OBX.replace(b"OBX|1|", b"OBX|2|"))
    assert twice.count(b"751-8^") == 2
    observations = count(engine, tables.ObservationRow)  # the enrollment ANC's
    received = run(intake.receive(twice, NOW))
    assert received.code == "AA", received.ack
    assert [r.anc for r in anc_rows(engine) if r.anc != ENROLLMENT_ANC] == [800]
    assert count(engine, tables.ObservationRow) == observations + 1
    again = run(intake.receive(twice, NOW))
    assert again.ack == received.ack


def test_the_same_preliminary_twice_in_one_message_is_stored_once(
    intake: Hl7Intake, engine: Engine
) -> None:
    preliminary = ANC_OBX.replace(b"|||F|||", b"|||P|||")
    twice = ORU.replace(ANC_OBX, preliminary + preliminary.replace(b"OBX|1|", b"OBX|2|"))
    observations = count(engine, tables.ObservationRow)
    received = run(intake.receive(twice, NOW))
    assert received.code == "AA", received.ack
    assert count(engine, tables.ObservationRow) == observations + 1


# --- timestamps (reproduction 3) ---------------------------------------------------------------


@pytest.mark.parametrize("msh7", [b"20211201081500+2500", b"2021120108150", b"20211341081500"])
def test_an_unreadable_msh_7_is_ae_102_naming_it(intake: Hl7Intake, msh7: bytes) -> None:
    received = run(intake.receive(with_field(b"MSH", 7, msh7), NOW))
    assert received.code == "AE"
    assert [e[:3] for e in errors(received.ack)] == [("MSH^1^7", "102", "E")]
    assert "MSH-7" in received.ack


def test_an_unreadable_msh_7_on_the_message_clock_is_ae_102_too(service: object) -> None:
    bad = with_field(b"MSH", 7, b"20211201081500+2500")
    received = run(Hl7Intake(service, LOCAL, clock="message").receive(bad))  # type: ignore[arg-type]
    assert received.code == "AE" and errors(received.ack)[0][:2] == ("MSH^1^7", "102")


@pytest.mark.parametrize(
    "obx14", [b"99991231235959.9999-1200", b"00010101000000+1400", b"20211201071500+9900"]
)
def test_an_unreadable_result_time_makes_that_result_unusable_and_the_message_aa(
    intake: Hl7Intake, engine: Engine, obx14: bytes
) -> None:
    message = ORU.replace(b"F|||20211201071500-0500\r", b"F|||" + obx14 + b"\r")
    message = with_field(b"OBR", 7, b"", message)  # no OBR-7 to fall back on
    received = run(intake.receive(message, NOW))
    assert received.code == "AA", received.ack
    assert ("OBX^1^14", "102", "W", "DRAW_TIME_INVALID") in errors(received.ack)
    assert [r.anc for r in anc_rows(engine)] == [ENROLLMENT_ANC]


# --- numbers (reproduction 4) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "flag"),
    [
        (b"1e40", "ANC_OUT_OF_RANGE"),
        (b"999999999999999999999", "ANC_OUT_OF_RANGE"),
        (b"-1e40", "ANC_OUT_OF_RANGE"),
        (b"1e999999999", "ANC_OUT_OF_RANGE"),
        (b"1" * 5000, "ANC_OUT_OF_RANGE"),
        (b"NaN", "ANC_VALUE_INVALID"),
        (b"Infinity", "ANC_VALUE_INVALID"),
    ],
)
def test_out_of_range_numbers_are_flagged_results_never_used_and_aa(
    intake: Hl7Intake, engine: Engine, value: bytes, flag: str
) -> None:
    received = run(intake.receive(obx_value(value), NOW))
    assert received.code == "AA", received.ack
    codes = {e[3] for e in errors(received.ack)}
    assert flag in codes or "ANC_VALUE_INVALID" in codes, received.ack
    rows = [r for r in anc_rows(engine) if r.anc != ENROLLMENT_ANC]
    assert len(rows) == 1 and not rows[0].usable


def test_a_nul_byte_is_ae_102_naming_its_field(intake: Hl7Intake, engine: Engine) -> None:
    observations = count(engine, tables.ObservationRow)
    received = run(intake.receive(ORU.replace(b"Doe^Jane", b"Doe^Ja\x00ne"), NOW))
    assert received.code == "AE"
    assert [e[:3] for e in errors(received.ack)] == [("PID^1^5", "102", "E")]
    assert count(engine, tables.ObservationRow) == observations


@postgresql_only
def test_a_nul_byte_in_the_control_id_is_ae_on_postgresql(intake: Hl7Intake) -> None:
    received = run(intake.receive(with_field(b"MSH", 10, b"MSG\x000001"), NOW))
    assert received.code == "AE" and errors(received.ack)[0][:2] == ("MSH^1^10", "102")
    assert "\x00" not in (received.ack or "")


@pytest.mark.parametrize(
    ("segment", "n", "location"),
    [(b"MSH", 10, "MSH^1^10"), (b"MSH", 3, "MSH^1^3"), (b"OBR", 3, "OBR^1^3")],
)
def test_an_over_long_key_is_ae_naming_its_field_and_the_limit(
    intake: Hl7Intake, segment: bytes, n: int, location: str
) -> None:
    received = run(intake.receive(with_field(segment, n, b"K" * 3000), NOW))
    assert received.code == "AE", received.ack
    assert [e[:3] for e in errors(received.ack)] == [(location, "102", "E")]
    assert "max_key_length" in (received.ack or "")


def test_a_field_over_the_length_limit_is_ae_naming_the_limit(intake: Hl7Intake) -> None:
    received = run(intake.receive(with_field(b"PID", 5, b"D" * 70_000), NOW))
    assert received.code == "AE"
    assert [e[:3] for e in errors(received.ack)] == [("PID^1^5", "102", "E")]
    assert "max_field_length" in (received.ack or "")


def test_an_ed_result_longer_than_a_field_is_still_taken(intake: Hl7Intake) -> None:
    pdf = b"OBX|3|ED|11502-2^Report^LN||^AP^PDF^Base64^" + b"QUJD" * 30_000 + b"||||||F\r"
    received = run(intake.receive(ORU + pdf, NOW))
    assert received.code == "AA", received.ack


@postgresql_only
def test_over_long_values_on_postgresql_are_ae_not_ar_207(intake: Hl7Intake) -> None:
    for segment, n in ((b"MSH", 10), (b"MSH", 4), (b"OBR", 3), (b"OBR", 2), (b"PID", 3)):
        received = run(intake.receive(with_field(segment, n, b"9" * 9000), NOW))
        assert received.code == "AE", (segment, n, received.ack)


# --- limits (reproduction 1) -------------------------------------------------------------------


def test_too_many_repetitions_is_ae_naming_the_limit(intake: Hl7Intake) -> None:
    pid3 = b"~".join([b"MRN123^^^GH&2.16.840.1.113883.3.999.1&ISO^MR"] * 101)
    received = run(intake.receive(with_field(b"PID", 3, pid3), NOW))
    assert received.code == "AE"
    assert [e[:3] for e in errors(received.ack)] == [("PID^1^3", "102", "E")]
    assert "max_repetitions" in (received.ack or "")


def test_too_many_segments_is_ae_naming_the_limit(intake: Hl7Intake) -> None:
    nte = b"NTE|1||note\r" * 5000
    received = run(intake.receive(ORU + nte, NOW))
    assert received.code == "AE"
    assert errors(received.ack)[0][1] == "100" and "max_segments" in (received.ack or "")


def test_limits_are_settings_of_the_senders_file(service: object) -> None:
    tight = SenderDirectory(
        accept_unknown=True, limits=Hl7Limits(max_repetitions=1, max_segments=5)
    )
    pid3 = b"A^^^GH~B^^^GH"
    received = run(Hl7Intake(service, tight).receive(with_field(b"PID", 3, pid3), NOW))  # type: ignore[arg-type]
    assert received.code == "AE" and "max_repetitions 1" in (received.ack or "")


def test_the_worst_pid_3_at_the_frame_limit_is_answered_quickly(intake: Hl7Intake) -> None:
    import time

    pid3 = b"~" * 1_000_000
    started = time.perf_counter()
    received = run(intake.receive(with_field(b"PID", 3, pid3), NOW))
    assert received.code == "AE"
    assert time.perf_counter() - started < 1.0


# --- ACKs (reproduction 5) ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [10, 12, 3, 4, 9, 11])
def test_echoed_fields_are_escaped_and_control_characters_dropped(
    intake: Hl7Intake, n: int
) -> None:
    hostile = b"A\x1cB\x0bC\rD\x00E\x1c\r"
    received = run(intake.receive(with_field(b"MSH", n, b"X" + hostile.replace(b"\r", b"")), NOW))
    ack = received.ack or ""
    assert not any(ord(c) < 32 and c != "\r" for c in ack), repr(ack)
    names = [s[0] for s in segments(ack)]
    assert names[:2] == ["MSH", "MSA"] and names.count("MSH") == names.count("MSA") == 1


@pytest.mark.parametrize("version", [b"0" * 6000, b"2.\xc2\xb2", b"2." + b"9" * 5000])
def test_an_absurd_version_is_ar_203_with_a_well_formed_ack(
    intake: Hl7Intake, version: bytes
) -> None:
    message = with_field(b"MSH", 18, b"UNICODE UTF-8", with_field(b"MSH", 12, version))
    received = run(intake.receive(message, NOW))
    assert received.code == "AR" and errors(received.ack)[0][:2] == ("MSH^1^12", "203")


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(["MSH", "PID", "OBX", "NTE"]),
    fields=st.lists(st.text(alphabet="ab~^\x00", max_size=8), min_size=1, max_size=6),
    max_repetitions=st.integers(1, 4),
    max_field_length=st.integers(1, 8),
)
def test_the_whole_segment_glance_finds_what_the_field_by_field_check_finds(
    name: str, fields: list[str], max_repetitions: int, max_field_length: int
) -> None:
    limits = Hl7Limits(max_repetitions=max_repetitions, max_field_length=max_field_length)
    segment = Segment([name, *fields])
    by_field = limits_check._field_problem("S^1", segment, fields, "~", limits)
    expected = by_field or limits_check._key_problem("S^1", segment, limits.max_key_length)
    assert limits_check._segment_problem("S^1", segment, "~", limits) == expected
