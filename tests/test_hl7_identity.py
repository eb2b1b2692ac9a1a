"""Patient identifier candidates from PID-3, PID-2 and PID-4 by rules (a)–(d) of
docs/contracts.md §4, and the ERR-8 texts that name them masked."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

from mappings.hl7v2.identity_text import ambiguous_text, unmatched_text
from mappings.hl7v2.oru import patient_candidates, patient_identifiers, to_lab_report
from mappings.hl7v2.senders import SenderConfig
from mappings.hl7v2.tokenizer import Segment, parse
from rems_core.identity import Candidate, Rule
from rems_core.model import Identifier
from rems_core.rulepack import DEFAULT_PACK
from tests.conftest import PACKS

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hl7"
OID = "2.16.840.1.113883.3.999.1"
REGISTRY_SYSTEM = f"urn:oid:{OID}"
LAB = SenderConfig(application="LAB", facility="GH")
PACK = PACKS.get(DEFAULT_PACK)
MSH = "MSH|^~\\&|LAB|GH|REMS|REMS|20211201120000||ORU^R01^ORU_R01|ID-0001|P|2.5.1"


def pid(fields: str, sender_msh: str = MSH) -> Segment:
    segment = parse(f"{sender_msh}\rPID|{fields}\r").first("PID")
    assert segment is not None
    return segment


def pid3(value: str) -> Segment:
    return pid(f"1||{value}")


def only(value: str, sender: SenderConfig = LAB) -> Candidate:
    (candidate,) = patient_candidates(pid3(value), sender)
    return candidate


def read(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode("ascii")


# --- the rules ------------------------------------------------------------------------------


def test_rule_a_an_iso_universal_id_is_an_oid_system() -> None:
    candidate = only(f"MRN123^^^GH&{OID}&ISO^MR")
    assert candidate == Candidate("MRN123", "PID-3[1]", Rule.OID, REGISTRY_SYSTEM, "GH")


def test_rule_a_reads_iso_in_any_case() -> None:
    assert only(f"MRN123^^^GH&{OID}&iso").rule is Rule.OID


def test_a_universal_id_of_another_type_is_no_oid() -> None:
    candidate = only(f"MRN123^^^&{OID}&DNS")
    assert (candidate.rule, candidate.system, candidate.namespace) == (Rule.UNRESOLVED, "", OID)


def test_rule_b_the_senders_map_names_the_system() -> None:
    sender = SenderConfig(application="LAB", assigning_authorities={"GH": REGISTRY_SYSTEM})
    candidate = only("MRN123^^^GH^MR", sender)
    assert (candidate.rule, candidate.system, candidate.namespace) == (
        Rule.MAPPED,
        REGISTRY_SYSTEM,
        "GH",
    )


def test_rule_b_the_empty_key_maps_a_repetition_without_a_namespace() -> None:
    sender = SenderConfig(application="LAB", assigning_authorities={"": REGISTRY_SYSTEM})
    assert only("MRN123", sender) == Candidate("MRN123", "PID-3[1]", Rule.MAPPED, REGISTRY_SYSTEM)


def test_rule_c_the_namespace_text_is_the_system() -> None:
    assert only("123^^^GH^MR") == Candidate("123", "PID-3[1]", Rule.NAMESPACE, "GH", "GH")


def test_rule_c_switched_off_leaves_the_namespace_unresolved() -> None:
    sender = SenderConfig(application="LAB", namespace_as_system=False)
    assert only("123^^^GH^MR", sender) == Candidate("123", "PID-3[1]", Rule.UNRESOLVED, "", "GH")


def test_rule_d_the_default_authority_resolves_a_bare_value() -> None:
    sender = SenderConfig(application="LAB", default_authority=REGISTRY_SYSTEM)
    candidate = only("MRN123", sender)
    assert (candidate.rule, candidate.system) == (Rule.DEFAULT_AUTHORITY, REGISTRY_SYSTEM)


def test_rule_d_applies_only_to_a_repetition_without_cx_4() -> None:
    sender = SenderConfig(application="LAB", default_authority=REGISTRY_SYSTEM)
    assert only(f"MRN123^^^&{OID}&L", sender).rule is Rule.UNRESOLVED


def test_a_bare_value_without_a_default_authority_is_unresolved() -> None:
    assert only("MRN123") == Candidate("MRN123", "PID-3[1]", Rule.UNRESOLVED)


# --- precedence -----------------------------------------------------------------------------


def test_an_oid_outranks_the_senders_map() -> None:
    sender = SenderConfig(application="LAB", assigning_authorities={"GH": "http://gh/mrn"})
    assert only(f"MRN123^^^GH&{OID}&ISO", sender).system == REGISTRY_SYSTEM


def test_the_senders_map_outranks_the_namespace_text() -> None:
    sender = SenderConfig(application="LAB", assigning_authorities={"GH": "http://gh/mrn"})
    assert only("MRN123^^^GH", sender).system == "http://gh/mrn"


def test_a_namespace_outranks_the_default_authority() -> None:
    sender = SenderConfig(application="LAB", default_authority=REGISTRY_SYSTEM)
    assert only("MRN123^^^GH", sender).rule is Rule.NAMESPACE


def test_a_switched_off_namespace_does_not_fall_back_to_the_default_authority() -> None:
    sender = SenderConfig(
        application="LAB", namespace_as_system=False, default_authority=REGISTRY_SYSTEM
    )
    assert only("MRN123^^^GH", sender).rule is Rule.UNRESOLVED


def test_each_repetition_gives_exactly_one_candidate() -> None:
    sender = SenderConfig(application="LAB", assigning_authorities={"GH": "http://gh/mrn"})
    candidates = patient_candidates(pid3(f"MRN123^^^GH&{OID}&ISO~E77^^^GHENT^PI"), sender)
    assert [(c.field, c.rule) for c in candidates] == [
        ("PID-3[1]", Rule.OID),
        ("PID-3[2]", Rule.NAMESPACE),
    ]


# --- fields, repetitions and values ---------------------------------------------------------


def test_pid_3_then_pid_2_then_pid_4() -> None:
    segment = pid("1|OLD9^^^GH|NEW1^^^GH~NEW2^^^GH|ALT1^^^GH~ALT2^^^GH")
    fields = [c.field for c in patient_candidates(segment, LAB)]
    assert fields == ["PID-3[1]", "PID-3[2]", "PID-2", "PID-4[1]", "PID-4[2]"]


def test_a_repeated_pid_2_is_numbered() -> None:
    fields = [c.field for c in patient_candidates(pid("1|A^^^GH~B^^^GH"), LAB)]
    assert fields == ["PID-2[1]", "PID-2[2]"]


def test_empty_repetitions_are_skipped_and_keep_their_numbers() -> None:
    candidates = patient_candidates(pid3("~^^^GH~  ^^^GH~MRN123^^^GH"), LAB)
    assert [(c.field, c.value) for c in candidates] == [("PID-3[4]", "MRN123")]


def test_values_and_authorities_are_stripped_of_surrounding_white_space() -> None:
    assert only(f" MRN123 ^^^ GH & {OID} & ISO ") == Candidate(
        "MRN123", "PID-3[1]", Rule.OID, REGISTRY_SYSTEM, "GH"
    )


def test_the_namespace_is_the_universal_id_without_a_namespace_id() -> None:
    assert only(f"MRN123^^^&{OID}&ISO").namespace == OID


def test_escapes_in_a_value_are_resolved() -> None:
    assert only("A\\T\\B^^^GH").value == "A&B"


def test_no_pid_identifier_gives_no_candidate() -> None:
    assert patient_candidates(pid("1||||Doe^Jane"), LAB) == []


def test_patient_identifiers_are_the_resolved_candidates_each_once() -> None:
    segment = pid3(f"MRN123^^^GH&{OID}&ISO~MRN123^^^&{OID}&ISO~BARE")
    assert patient_identifiers(segment, LAB) == [Identifier(REGISTRY_SYSTEM, "MRN123")]


def test_the_lab_report_carries_candidates_and_their_resolved_identifiers() -> None:
    message = parse(read("oru-v24-pid2-pid4.hl7"))
    report = to_lab_report(message, LAB, PACK, ZoneInfo("UTC"))
    assert [(c.field, c.rule, c.system) for c in report.candidates] == [
        ("PID-2", Rule.OID, REGISTRY_SYSTEM),
        ("PID-4[1]", Rule.NAMESPACE, "GHOLD"),
    ]
    assert report.identifiers == [
        Identifier(REGISTRY_SYSTEM, "MRN123"),
        Identifier("GHOLD", "400917"),
    ]
    assert [r.code for r in report.results] == ["751-8"]


def test_the_namespace_fixture_matches_the_registry_once_mapped() -> None:
    sender = SenderConfig(application="CLARIS LIS", assigning_authorities={"GH": REGISTRY_SYSTEM})
    report = to_lab_report(parse(read("oru-v251-namespace-mrn.hl7")), sender, PACK, ZoneInfo("UTC"))
    assert report.identifiers == [Identifier(REGISTRY_SYSTEM, "MRN123")]
    assert report.candidates[0].rule is Rule.MAPPED


def test_the_bare_fixture_needs_a_default_authority() -> None:
    bare = to_lab_report(parse(read("oru-v23-bare-mrn.hl7")), LAB, PACK, ZoneInfo("UTC"))
    sender = SenderConfig(application="HEMALINK", default_authority=REGISTRY_SYSTEM)
    resolved = to_lab_report(parse(read("oru-v23-bare-mrn.hl7")), sender, PACK, ZoneInfo("UTC"))
    assert (bare.identifiers, bare.candidates[0].rule) == ([], Rule.UNRESOLVED)
    assert resolved.identifiers == [Identifier(REGISTRY_SYSTEM, "MRN123")]
    assert [r.code for r in resolved.results] == ["6690-2", "770-8"]


# --- the texts ------------------------------------------------------------------------------


def test_unmatched_names_the_tried_candidates_masked_and_what_resolves_a_bare_one() -> None:
    sender = SenderConfig(
        application="LAB", facility="GH", assigning_authorities={"NIST": "NIST MPI"}
    )
    candidates = patient_candidates(pid3(f"NIST1234^^^NIST~123456^^^&{OID}&ISO~MRN12346P"), sender)
    assert unmatched_text(candidates, sender.key) == (
        f"No registry patient has PID-3[1] NIST MPI|******34 or PID-3[2] {REGISTRY_SYSTEM}|****56;"
        " PID-3[3] (*******6P) has no assigning authority: default_authority in the senders file"
        " for LAB|GH would resolve it. Kept for review."
    )


def test_unmatched_says_when_namespace_as_system_is_off() -> None:
    sender = SenderConfig(application="LAB", facility="GH", namespace_as_system=False)
    text = unmatched_text(patient_candidates(pid3("123456^^^GH~654321^^^LAB2"), sender), sender.key)
    assert text == (
        "PID-3[1] (GH ****56) and PID-3[2] (LAB2 ****21) have an unmapped namespace"
        " (namespace_as_system is false for LAB|GH): an assigning_authorities entry would resolve"
        " them. Kept for review."
    )


def test_unmatched_without_any_candidate() -> None:
    assert unmatched_text([], "LAB|GH") == "PID-3 carries no identifier. Kept for review."


def test_ambiguous_names_the_candidates_and_the_count() -> None:
    candidates = patient_candidates(pid3(f"MRN123^^^&{OID}&ISO~E7781234^^^GHENT~X9^^^GHX"), LAB)
    assert ambiguous_text(candidates, 3) == (
        f"PID-3[1] {REGISTRY_SYSTEM}|****23, PID-3[2] GHENT|******34 and PID-3[3] GHX|** name 3"
        " different registry patients: nothing was filed. Kept for review."
    )


def test_no_text_shows_a_whole_value() -> None:
    values = ["MRN123", "E7781234", "MRN12346P"]
    candidates = patient_candidates(
        pid3(f"{values[0]}^^^GH~{values[1]}^^^&{OID}&ISO~{values[2]}"), LAB
    )
    texts = (unmatched_text(candidates, LAB.key), ambiguous_text(candidates[:2], 2))
    assert not any(value in text for value in values for text in texts)
