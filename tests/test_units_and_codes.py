"""docs/rules.md §1 as labs write it: unit spellings and their factors, a unit split by an
unescaped caret, and codes whose text names another analyte (CODE_TEXT_MISMATCH)."""

from __future__ import annotations

from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.quantity import Quantity

from mappings.fhir.observation import LOINC, UCUM, code_texts, quantity_text
from mappings.hl7v2.oru import to_lab_report
from mappings.hl7v2.senders import SenderConfig
from mappings.hl7v2.tokenizer import parse
from rems_core.anc import code_text_mismatch, count_factor, other_analyte
from tests.builders import REMS

PER_THOUSAND = [
    "10^9/L",
    "10^3/uL",
    "×10⁹/L",
    "×10³/µL",
    "x10E9/L",
    "10E9/L",
    "10E3/uL",
    "x10^3/uL",
    "Thousand/uL",
    "THOUSAND/UL",
    "giga/L",
    "Giga/l",
    "G/L",
    "G/l",
    "K/µL",
    "K/μL",
    "K/mcL",
    "k/ul",
    "10*9/l",
]
PER_MICROLITRE = ["/µL", "/μL", "/UL", "cells/µL", "cells/μL", "/mcL", "cells/mcL", "CELLS/MM3"]
MASS_OR_OTHER = ["g/L", "g/l", "g/dL", "mg/L", "10^9", "x10", "9/L", "U/L", "10^6/uL", ""]
LAB = SenderConfig(application="LAB", facility="GH")
HEADER = "MSH|^~\\&|LAB|GH|REMS|REMS|20211201090000||ORU^R01|U1|P|2.5\rPID|1||M1^^^GH^MR\r"
OBR = "OBR|1||ACC-1|CBC|||20211201080000\r"


@pytest.mark.parametrize("unit", PER_THOUSAND)
def test_spellings_of_ten_to_the_nine_per_litre_are_thousands_per_microlitre(unit: str) -> None:
    assert count_factor(REMS, unit) == Decimal(1000)


@pytest.mark.parametrize("unit", PER_MICROLITRE)
def test_spellings_of_one_per_microlitre_are_one(unit: str) -> None:
    assert count_factor(REMS, unit) == Decimal(1)


@pytest.mark.parametrize("unit", MASS_OR_OTHER)
def test_a_mass_unit_or_a_fragment_is_never_a_count(unit: str) -> None:
    assert count_factor(REMS, unit) is None


def test_every_case_sensitive_spelling_is_in_the_table() -> None:
    assert set(REMS.unit_case_matters.value) <= set(REMS.count_units.value)


def test_every_code_role_names_an_analyte_of_the_word_table() -> None:
    named = set(REMS.analyte_of_code.value.model_dump().values())
    assert named <= set(REMS.analyte_words.value)


def obx_unit(units: str) -> tuple[str, list[str]]:
    message = f"{HEADER}{OBR}OBX|1|NM|751-8^Neutrophils^LN||1.8|{units}|||||F\r"
    report = to_lab_report(parse(message.encode()), LAB, REMS, ZoneInfo("UTC"))
    return report.results[0].unit, [p.code for p in report.problems]


def test_a_unit_split_by_an_unescaped_caret_is_joined_with_a_warning() -> None:
    assert obx_unit("x10^9/L") == ("x10^9/L", ["UNIT_UNESCAPED_CARET"])
    assert obx_unit("10^3/uL") == ("10^3/uL", ["UNIT_UNESCAPED_CARET"])


def test_an_escaped_caret_and_a_coded_unit_need_no_warning() -> None:
    assert obx_unit("10\\S\\9/L") == ("10^9/L", [])
    assert obx_unit("10*9/L^^UCUM") == ("10*9/L", [])
    assert obx_unit("^10*3/uL") == ("10*3/uL", [])


def test_pieces_that_join_into_no_known_unit_are_left_as_they_were() -> None:
    assert obx_unit("mg^dL") == ("mg", [])


@pytest.mark.parametrize(
    ("code", "text", "analyte"),
    [
        ("751-8", "LYM#", "lymphocytes"),
        ("751-8", "Lymphocytes", "lymphocytes"),
        ("751-8", "MON#", "monocytes"),
        ("753-4", "Eos", "eosinophils"),
        ("26499-4", "BASO#", "basophils"),
        ("751-8", "GRAN#", "granulocytes"),
        ("751-8", "Immature granulocytes", "granulocytes"),
        ("751-8", "MID#", "mid_cells"),
        ("751-8", "WBC", "leukocytes"),
        ("770-8", "LYMPH%", "lymphocytes"),
        ("764-1", "Mono %", "monocytes"),
        ("6690-2", "NEUT#", "neutrophils"),
        ("6690-2", "PLT", "platelets"),
    ],
)
def test_a_text_naming_another_analyte_is_a_mismatch(code: str, text: str, analyte: str) -> None:
    assert other_analyte(REMS, code, [text]) == analyte


@pytest.mark.parametrize(
    ("code", "text"),
    [
        ("751-8", "Neutrophils [#/volume] in Blood by Automated count"),
        ("751-8", "NEUT#"),
        ("751-8", "ANC"),
        ("751-8", "Polys"),
        ("751-8", "Granulocytes neutrophiles"),  # neutrophil words win
        ("751-8", "Polynucléaires neutrophiles"),
        ("770-8", "Neutrophils/100 leukocytes in Blood by Automated count"),
        ("26505-8", "Segs"),
        ("764-1", "Bands"),
        ("6690-2", "Leukocytes [#/volume] in Blood"),
        ("6690-2", "WBC"),
        ("751-8", ""),
        ("751-8", "Absolute count"),  # no analyte named: taken at its code
        ("751-8", "Lymphoma panel"),  # words, not parts of words
        ("718-7", "Lymphocytes"),  # not a code the REMS reads
    ],
)
def test_a_text_naming_the_codes_own_analyte_or_none_is_no_mismatch(code: str, text: str) -> None:
    assert other_analyte(REMS, code, [text]) is None


def test_the_mismatch_finding_quotes_the_label_and_the_analyte() -> None:
    found = code_text_mismatch(REMS, "751-8", ["LYM#", "", "Lymphocytes"])
    assert found is not None and found.code == "CODE_TEXT_MISMATCH"
    assert "'LYM# / Lymphocytes'" in found.text and "lymphocytes" in found.text


def test_a_mismatched_obx_is_not_a_result_and_the_alternate_text_counts_too() -> None:
    message = (
        f"{HEADER}{OBR}OBX|1|NM|751-8^LYM#^LN||1.1|10*3/uL|||||F\r"
        "OBX|2|NM|751-8^ABS^LN^LY#^Lymphocytes abs^L||1.0|10*3/uL|||||F\r"
        "OBX|3|NM|751-8^NEU#^LN||2.1|10*3/uL|||||F\r"
    )
    report = to_lab_report(parse(message.encode()), LAB, REMS, ZoneInfo("UTC"))
    assert [(p.location, p.code) for p in report.problems] == [
        ("OBX^1^3", "CODE_TEXT_MISMATCH"),
        ("OBX^2^3", "CODE_TEXT_MISMATCH"),
    ]
    assert [r.value for r in report.results] == ["2.1"]


def quantity(**fields: object) -> Quantity:
    return Quantity.model_validate({"value": 1.8, **fields})


def test_fhir_reads_the_ucum_code_else_the_unit_text() -> None:
    coded = quantity(unit="thousand per microlitre", system=UCUM, code="10*3/uL")
    assert quantity_text(coded) == ("1.8", "10*3/uL")
    assert quantity_text(quantity(unit="thou/uL")) == ("1.8", "thou/uL")
    assert quantity_text(quantity(unit="%")) == ("1.8", "%")
    assert quantity_text(quantity()) == ("1.8", "")


def test_fhir_texts_are_the_code_text_and_every_display() -> None:
    concept = CodeableConcept.model_validate(
        {"text": "LYM#", "coding": [{"system": LOINC, "code": "751-8", "display": "Lymphs"}]}
    )
    assert code_texts(concept) == ["LYM#", "Lymphs"]
