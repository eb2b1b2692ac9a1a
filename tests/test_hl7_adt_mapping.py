"""ADT messages → the event, its kind and each patient's candidates (docs/contracts.md §4), on
the ADT fixtures, which our tokenizer and hl7apy both read."""

from __future__ import annotations

from pathlib import Path

import pytest
from hl7apy.parser import parse_message

from mappings.hl7v2.adt import AdtEvent, AdtPatient, to_adt_event
from mappings.hl7v2.senders import SenderConfig
from mappings.hl7v2.tokenizer import parse
from rems_core.identity import Candidate, Rule

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hl7"
REGISTRY_SYSTEM = "urn:oid:2.16.840.1.113883.3.999.1"
SENDER = SenderConfig(application="CAREWAVE", facility="GENERAL HOSP")
MRN123 = Candidate("MRN123", "PID-3[1]", Rule.OID, REGISTRY_SYSTEM, "GH")
ENTERPRISE = Candidate("E7781234", "PID-3[2]", Rule.NAMESPACE, "GHENT", "GHENT")
DUPLICATE = Candidate("MRN987", "MRG-1[1]", Rule.OID, REGISTRY_SYSTEM, "GH")
NEW_FIXTURES = [
    "oru-v251-namespace-mrn.hl7",
    "oru-v23-bare-mrn.hl7",
    "oru-v24-pid2-pid4.hl7",
    "adt-a01-admit.hl7",
    "adt-a04-register.hl7",
    "adt-a08-update.hl7",
    "adt-a28-add-person.hl7",
    "adt-a31-update-person.hl7",
    "adt-a40-merge.hl7",
    "adt-a34-merge-v23.hl7",
    "adt-a47-change-identifier.hl7",
]


def read(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode("ascii")


def event_of(name: str, sender: SenderConfig = SENDER) -> AdtEvent:
    return to_adt_event(parse(read(name)), sender)


@pytest.mark.parametrize(
    ("name", "event"),
    [
        ("adt-a01-admit.hl7", "A01"),
        ("adt-a04-register.hl7", "A04"),
        ("adt-a08-update.hl7", "A08"),
        ("adt-a28-add-person.hl7", "A28"),
        ("adt-a31-update-person.hl7", "A31"),
    ],
)
def test_identifying_events_name_the_registry_patient_and_a_new_identifier(
    name: str, event: str
) -> None:
    assert event_of(name) == AdtEvent(event, "identify", [AdtPatient([MRN123, ENTERPRISE], [])])


def test_a47_changes_the_identifier_merge_1_names() -> None:
    patient = AdtPatient([MRN123, ENTERPRISE], [DUPLICATE])
    assert event_of("adt-a47-change-identifier.hl7") == AdtEvent("A47", "merge", [patient])


def test_a40_merges_each_pid_with_the_mrg_after_it() -> None:
    merge = event_of("adt-a40-merge.hl7")
    assert (merge.event, merge.kind) == ("A40", "merge")
    assert merge.patients[0] == AdtPatient([MRN123, ENTERPRISE], [DUPLICATE])
    assert [(c.field, c.value) for c in merge.patients[1].candidates] == [("PID-3[1]", "MRN456")]
    assert [(c.field, c.value) for c in merge.patients[1].prior] == [("MRG-1[1]", "MRN654")]


def test_a34_of_an_older_sender_reads_mrg_1_then_mrg_4() -> None:
    sender = SenderConfig(application="MT", default_authority=REGISTRY_SYSTEM)
    (patient,) = event_of("adt-a34-merge-v23.hl7", sender).patients
    assert patient.prior == [
        Candidate("MRN987", "MRG-1[1]", Rule.OID, REGISTRY_SYSTEM, "GH"),
        Candidate("MRN987", "MRG-4", Rule.DEFAULT_AUTHORITY, REGISTRY_SYSTEM),
    ]


def test_no_registry_identifier_is_in_any_merges_prior() -> None:
    for name in ("adt-a40-merge.hl7", "adt-a34-merge-v23.hl7", "adt-a47-change-identifier.hl7"):
        priors = [c.value for p in event_of(name).patients for c in p.prior]
        assert priors and "MRN123" not in priors, name


def test_the_event_is_read_from_evn_1_when_msh_9_has_no_trigger() -> None:
    text = "MSH|^~\\&|MT|GHMT|REMS|REMS|202112041130||ADT|M1|P|2.3\rEVN|a08|202112041130\rPID|1||X1^^^GH\r"
    assert to_adt_event(parse(text), SENDER).event == "A08"


def test_msh_9_outranks_evn_1() -> None:
    text = "MSH|^~\\&|MT|GHMT|REMS|REMS|202112041130||ADT^A31|M1|P|2.3\rEVN|A08\rPID|1||X1^^^GH\r"
    assert to_adt_event(parse(text), SENDER).kind == "identify"
    assert to_adt_event(parse(text), SENDER).event == "A31"


def test_other_events_are_other_and_still_read() -> None:
    text = "MSH|^~\\&|MT|GHMT|REMS|REMS|202112041130||ADT^A03|M1|P|2.5\rEVN|A03\rPID|1||X1^^^GH\r"
    event = to_adt_event(parse(text), SENDER)
    assert (event.event, event.kind, len(event.patients)) == ("A03", "other", 1)


def test_an_mrg_before_any_pid_gives_no_patient() -> None:
    text = "MSH|^~\\&|MT|GHMT|REMS|REMS|202112041130||ADT^A40|M1|P|2.5\rMRG|X9^^^GH\r"
    assert to_adt_event(parse(text), SENDER).patients == []


@pytest.mark.parametrize("name", NEW_FIXTURES)
def test_each_new_fixture_is_read_by_our_tokenizer_and_by_hl7apy(name: str) -> None:
    text = read(name)
    ours = parse(text)
    theirs = parse_message(text, find_groups=False)
    assert [s.name for s in ours.segments] == [s.name for s in theirs.children]
    assert text.endswith("\r") and "\n" not in text
