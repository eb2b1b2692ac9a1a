"""Draw times as senders write them (docs/contracts.md §4): the earliest present of SPM-17.1,
OBR-7, OBR-14 and OBX-14, DRAW_TIME_INCONSISTENT beyond 24 h, or the sender's draw_time_field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.app.service import RemsService
from gateway.app.values import Source
from gateway.mllp.intake import Hl7Intake
from mappings.hl7v2.oru import LabReport, to_lab_report
from mappings.hl7v2.senders import SenderConfig, SenderDirectory, SendersFileError
from mappings.hl7v2.tokenizer import parse
from rems_core.rulepack import DEFAULT_PACK
from tests.conftest import PACKS, run, sqlite_only
from tests.test_hl7_intake import NOW, errors, fixture, intake
from tests.test_service import registry

__all__ = ["intake"]  # the fixture, shared with tests/test_hl7_intake.py
# Which field is the draw time: the mapping's; the ANC it files is stored as test_hl7_intake's
# are, on both backends (conftest: sqlite_only).
pytestmark = sqlite_only

EST = timezone(timedelta(hours=-5))
PACK = PACKS.get(DEFAULT_PACK)
ANY_SENDER = SenderConfig(application="LAB")
MSH = "MSH|^~\\&|LAB|GH|REMS|REMS|20211203120000+0000||ORU^R01^ORU_R01|DT1|P|2.5.1"
PID = "PID|1||MRN123^^^GH&2.16.840.1.113883.3.999.1&ISO^MR"


def report(message: bytes | str, sender: SenderConfig = ANY_SENDER) -> LabReport:
    return to_lab_report(parse(message), sender, PACK, UTC)


def oru(obr_7: str = "", obr_14: str = "", obx_14: str = "", spm_17: str | None = None) -> str:
    """One ANC with the draw-time fields given; the SPM (if any) after the OBX, as in ORU^R01."""
    obr = f"OBR|1|ORD1|ACC1|57021-8^CBC^LN|||{obr_7}|||||||{obr_14}"
    obx = f"OBX|1|NM|751-8^Neutrophils^LN||2.0|10*3/uL|||||F|||{obx_14}"
    lines = [MSH, PID, obr, obx]
    if spm_17 is not None:
        lines.append(f"SPM|1|ACC1||BLDV{'|' * 13}{spm_17}")
    return "\r".join(lines) + "\r"


def problems(found: LabReport) -> list[tuple[str, str, str, str]]:
    return [(p.location, p.hl7_code, p.severity, p.code) for p in found.problems]


def test_a_reference_lab_s_result_time_in_obx_14_does_not_make_its_anc_fresher() -> None:
    found = report(fixture("oru-v251-reference-lab-result-time.hl7"))
    collected = datetime(2021, 11, 30, 20, 0, tzinfo=EST)  # OBR-7; OBX-14 is 38.5 h later
    assert [r.drawn for r in found.results] == [collected, collected]
    assert problems(found) == [("OBR^1^7", "0", "W", "DRAW_TIME_INCONSISTENT")] * 2
    assert "38.5 h" in found.problems[0].text and "OBR-7" in found.problems[0].text


def test_an_analyser_s_analysis_time_in_obr_7_gives_way_to_the_spm_17_after_the_obx() -> None:
    found = report(fixture("oru-v251-analyser-spm-collection.hl7"))
    collected = datetime(2021, 11, 30, 17, 10, tzinfo=EST)  # SPM-17; OBR-7 is 15.5 h later
    assert [r.drawn for r in found.results] == [collected] * 3
    assert found.problems == []  # within 24 h of each other


def test_an_outreach_sender_names_obx_14_and_its_order_time_in_obr_7_is_not_read() -> None:
    message = fixture("oru-v251-outreach-order-time.hl7")
    named = SenderConfig(application="OUTREACH", draw_time_field="OBX-14")
    found = report(message, named)
    assert [r.drawn for r in found.results] == [datetime(2021, 11, 30, 8, 0, tzinfo=EST)]
    assert found.problems == []
    earliest = report(message)  # without the setting: the order time, with the warning
    assert [r.drawn for r in earliest.results] == [datetime(2021, 11, 27, 14, 0, tzinfo=EST)]
    assert problems(earliest) == [("OBR^1^7", "0", "W", "DRAW_TIME_INCONSISTENT")]


@pytest.mark.parametrize(
    ("fields", "drawn"),
    [
        ({"obr_7": "202112010800"}, datetime(2021, 12, 1, 8, 0, tzinfo=UTC)),
        ({"obx_14": "202112010800"}, datetime(2021, 12, 1, 8, 0, tzinfo=UTC)),
        (
            {"obr_14": "202112010900", "obx_14": "202112011000"},
            datetime(2021, 12, 1, 9, tzinfo=UTC),
        ),
        ({"obr_7": "202112011000", "spm_17": "202112010700"}, datetime(2021, 12, 1, 7, tzinfo=UTC)),
        # exactly 24 h apart is consistent
        ({"obr_7": "202112010800", "obx_14": "202112020800"}, datetime(2021, 12, 1, 8, tzinfo=UTC)),
    ],
    ids=["obr-7-only", "obx-14-only", "obr-14-earliest", "spm-17-earliest", "24-h-apart"],
)
def test_the_earliest_present_field_is_the_draw_time(
    fields: dict[str, str], drawn: datetime
) -> None:
    found = report(oru(**fields))
    assert [r.drawn for r in found.results] == [drawn]
    assert found.problems == []


def test_one_second_beyond_24_h_is_inconsistent_and_names_the_field_used() -> None:
    found = report(oru(obr_7="20211202080001", obr_14="20211201080000"))
    assert found.results[0].drawn == datetime(2021, 12, 1, 8, 0, tzinfo=UTC)
    assert problems(found) == [("OBR^1^14", "0", "W", "DRAW_TIME_INCONSISTENT")]


def test_times_without_an_offset_are_in_the_sender_s_time_zone() -> None:
    eastern = SenderConfig(application="LAB", timezone="America/New_York")
    found = report(oru(obr_7="202112010800", obx_14="202112011300+0000"), eastern)
    assert found.results[0].drawn == datetime(2021, 12, 1, 13, 0, tzinfo=UTC)  # 08:00 EST


def test_no_draw_time_in_any_field_is_draw_time_missing() -> None:
    found = report(oru())
    assert found.results == []
    assert problems(found) == [("OBX^1^14", "101", "W", "DRAW_TIME_MISSING")]


@pytest.mark.parametrize(
    ("fields", "location"),
    [
        ({"obr_7": "20211201080000", "obx_14": "20211341080000"}, "OBX^1^14"),
        ({"obr_7": "20211201080000+2500", "obx_14": "20211201090000"}, "OBR^1^7"),
        ({"obr_7": "20211201080000", "spm_17": "2021120108000"}, "SPM^1^17"),
    ],
    ids=["obx-14", "obr-7", "spm-17"],
)
def test_an_unreadable_field_among_readable_ones_makes_the_result_unusable(
    fields: dict[str, str], location: str
) -> None:
    """It may be the collection time: the others could make the ANC look fresher than it is."""
    found = report(oru(**fields))
    assert found.results == []
    assert problems(found) == [(location, "102", "W", "DRAW_TIME_INVALID")]


def test_a_named_field_is_the_only_one_read() -> None:
    spm = SenderConfig(application="LAB", draw_time_field="SPM-17")
    # OBX-14 unreadable and OBR-7 a week earlier: neither is read
    message = oru(obr_7="20211124080000", obx_14="garbage", spm_17="20211201070000")
    found = report(message, spm)
    assert [r.drawn for r in found.results] == [datetime(2021, 12, 1, 7, 0, tzinfo=UTC)]
    assert found.problems == []


def test_a_named_field_that_is_empty_is_draw_time_missing_even_when_others_are_present() -> None:
    obr_14 = SenderConfig(application="LAB", draw_time_field="OBR-14")
    found = report(oru(obr_7="20211201080000", obx_14="20211201090000"), obr_14)
    assert found.results == []
    assert problems(found) == [("OBR^1^14", "101", "W", "DRAW_TIME_MISSING")]


def test_the_spm_an_obx_follows_outranks_the_first_spm_of_its_group() -> None:
    lines = [
        MSH,
        PID,
        "OBR|1|ORD1|ACC1|57021-8^CBC^LN",
        f"SPM|1|ACC1||BLDV{'|' * 13}20211201070000",
        "OBX|1|NM|751-8^Neutrophils^LN||2.0|10*3/uL|||||F",
        f"SPM|2|ACC2||BLDV{'|' * 13}20211202070000",
        "OBX|2|NM|770-8^Neutrophils %^LN||41|%|||||F",
    ]
    found = report("\r".join(lines) + "\r")
    assert [r.drawn.day for r in found.results] == [1, 2]


@pytest.mark.parametrize("value", ["SPM-17", "OBR-7", "OBR-14", "OBX-14"])
def test_draw_time_field_takes_the_four_fields(value: str) -> None:
    assert SenderConfig(application="LAB", draw_time_field=value).draw_time_field == value  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["OBR-8", "obx-14", "OBX-14.1", ""])
def test_a_senders_file_naming_another_draw_time_field_is_refused(
    tmp_path: Path, value: str
) -> None:
    path = tmp_path / "senders.yaml"
    path.write_text(f"senders:\n  - application: LAB\n    draw_time_field: {value!r}\n")
    with pytest.raises(SendersFileError) as refused:
        SenderDirectory.load(path)
    assert "senders.0.draw_time_field: Input should be 'SPM-17', 'OBR-7'" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_ack_carries_draw_time_inconsistent_and_the_anc_is_filed(intake: Hl7Intake) -> None:
    received = run(intake.receive(fixture("oru-v251-reference-lab-result-time.hl7"), NOW))
    assert received.code == "AA", received.ack
    assert ("OBR^1^7", "0", "W", "DRAW_TIME_INCONSISTENT") in errors(received.ack)
    assert received.outcome is not None
    assert [(r.anc, r.drawn) for r in received.outcome.results] == [
        (2300, datetime(2021, 12, 1, 1, 0, tzinfo=UTC))
    ]


def test_a_sender_s_draw_time_field_reaches_the_intake(service: RemsService) -> None:
    run(service.load_registry(registry(enrolled_on="2021-11-20"), Source("test")))
    named = SenderConfig(application="OUTREACH", draw_time_field="OBX-14")
    outreach = Hl7Intake(service, SenderDirectory(senders=[named]))
    received = run(outreach.receive(fixture("oru-v251-outreach-order-time.hl7"), NOW))
    assert received.code == "AA" and "DRAW_TIME_INCONSISTENT" not in (received.ack or "")
    assert received.outcome is not None
    assert [r.drawn for r in received.outcome.results] == [datetime(2021, 11, 30, 13, tzinfo=UTC)]


def test_serve_with_another_draw_time_field_stops_with_one_line_naming_it(tmp_path: Path) -> None:
    from tests.test_serve import clean_environment, rems_gateway

    senders = tmp_path / "senders.yaml"
    senders.write_text("senders:\n  - application: LAB\n    draw_time_field: OBR-8\n")
    started = rems_gateway(
        "serve", "--senders", str(senders), cwd=tmp_path, env=clean_environment()
    )
    assert started.returncode == 2
    assert started.stderr.strip().endswith(
        "senders.0.draw_time_field: Input should be 'SPM-17', 'OBR-7', 'OBR-14' or 'OBX-14'"
    )
    assert "Traceback" not in started.stderr
