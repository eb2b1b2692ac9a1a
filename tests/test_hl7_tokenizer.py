"""The HL7 v2 tokenizer: vectors from HL7 v2 chapter 2 (delimiters, escape sequences, MSH-18,
batches, errors as table 0357 codes), and properties: ER7 round trips, and the same structure as
hl7apy and python-hl7 read from the same ORU^R01 messages."""

from __future__ import annotations

import codecs
import re
from typing import Any

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mappings.hl7v2.tokenizer import (
    Encoding,
    FieldValues,
    HL7ParseError,
    Message,
    Segment,
    escape,
    parse,
    split_batch,
    unescape,
)

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MSH = "MSH|^~\\&|LAB|HOSP|GW|REMS|20240312071500||ORU^R01^ORU_R01|MSG001|P|2.5"


def oru(*segments: str, msh: str = MSH) -> str:
    return "\r".join((msh, *segments)) + "\r"


def msh_with_charset(msh18: str) -> str:
    return f"{MSH}||||||{msh18}"


def only(message: Message, name: str = "PID") -> Segment:
    segment = message.first(name)
    assert segment is not None
    return segment


def obx_5(message: Message) -> str:
    return only(message, "OBX").get(5)


def error_of(data: bytes | str, fallback_charset: str | None = None) -> HL7ParseError:
    with pytest.raises(HL7ParseError) as caught:
        parse(data, fallback_charset)
    return caught.value


# --- delimiters and fields ------------------------------------------------------------------


def test_fields_use_hl7_numbering_with_msh_1_and_msh_2_as_the_delimiters() -> None:
    message = parse(oru("PID|1||MRN1"))
    assert message.msh.field(1) == [[["|"]]]
    assert message.msh.field(2) == [[["^~\\&"]]]
    assert message.msh.raw(2) == "^~\\&"
    assert message.msh.get(9, 2) == "R01"
    assert message.msh.get(10) == "MSG001"
    assert only(message).get(3) == "MRN1"
    assert message.encoding == Encoding()


def test_repeated_pid_3_gives_every_identifier_with_its_assigning_authority() -> None:
    pid = only(parse(oru("PID|1||MRN1^^^GH&1.2.3&ISO^MR~999^^^SSA&2.16.840.1.113883.4.1&ISO^SS")))
    assert pid.repetitions(3) == 2
    assert pid.field(3)[0] == [["MRN1"], [""], [""], ["GH", "1.2.3", "ISO"], ["MR"]]
    assert [pid.get(3, 1, repetition=r) for r in range(2)] == ["MRN1", "999"]
    assert pid.get(3, 4, 2, repetition=1) == "2.16.840.1.113883.4.1"
    assert pid.get(3, 1, repetition=2) == ""


def test_empty_components_and_trailing_separators_are_kept_in_place() -> None:
    pid = only(parse(oru("PID|1||^^^|a^b^|~|&|||")))
    assert pid.field(2) == []
    assert pid.repetitions(2) == 0
    assert pid.field(3) == [[[""], [""], [""], [""]]]
    assert pid.field(4) == [[["a"], ["b"], [""]]]
    assert pid.field(5) == [[[""]], [[""]]]
    assert pid.field(6) == [[["", ""]]]
    assert pid.field(9) == []
    assert pid.field(40) == []
    assert (pid.get(4, 2), pid.get(4, 3), pid.get(4, 4), pid.get(40, 9, 9, 9)) == ("b", "", "", "")
    assert pid.raw(4) == "a^b^"
    assert pid.raw(40) == ""


def test_components_count_from_one_and_fields_from_one() -> None:
    segment = Segment(["PID", "1"])
    with pytest.raises(ValueError):
        segment.get(1, component=0)
    with pytest.raises(ValueError):
        segment.field(0)


def test_custom_encoding_characters_come_from_msh_1_and_msh_2() -> None:
    message = parse(
        "MSH|#!@&|LAB|HOSP|GW|REMS|20240312||ORU#R01|C1|P|2.5\r"
        "PID|1||A1###X&1.2&ISO!B2|DOE#JO@S@HN@F@@R@@E@@T@|plain^~\\text"
    )
    pid = only(message)
    assert message.encoding == Encoding("|", "#", "!", "@", "&")
    assert message.msh.get(9, 2) == "R01"
    assert [pid.get(3, 1, repetition=r) for r in range(pid.repetitions(3))] == ["A1", "B2"]
    assert pid.get(3, 4, 2) == "1.2"
    assert pid.field(4) == [[["DOE"], ["JO#HN|!@&"]]]
    assert pid.get(5) == "plain^~\\text"


def test_a_field_separator_other_than_the_bar() -> None:
    message = parse("MSH*^~\\&*LAB*HOSP*GW*REMS*20240312**ORU^R01*C1*P*2.5\rOBX*1*NM*751-8^ANC^LN")
    assert message.msh.field(1) == [[["*"]]]
    assert only(message, "OBX").get(3, 2) == "ANC"


def test_v27_truncation_character_is_the_fifth_encoding_character() -> None:
    message = parse(oru("OBX|1|ST|X||long valu\\P\\", msh=MSH.replace("^~\\&", "^~\\&#")))
    assert message.encoding.truncation == "#"
    assert obx_5(message) == "long valu#"
    assert obx_5(parse(oru("OBX|1|ST|X||a\\P\\b"))) == "a\\P\\b"  # no truncation character


@pytest.mark.parametrize("ending", ["\r", "\r\n", "\n"])
def test_segments_end_in_cr_crlf_or_lf_and_blank_lines_are_ignored(ending: str) -> None:
    text = ending.join([MSH, "", "PID|1||MRN1", "  ", "OBX|1|NM|751-8||1.8", "", ""])
    message = parse(text)
    assert [segment.name for segment in message.segments] == ["MSH", "PID", "OBX"]
    assert obx_5(message) == "1.8"
    assert message.msh.get(12) == "2.5"


# --- escape sequences -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("escaped", "text"),
    [
        ("a\\F\\b", "a|b"),
        ("a\\S\\b", "a^b"),
        ("a\\T\\b", "a&b"),
        ("a\\R\\b", "a~b"),
        ("a\\E\\b", "a\\b"),
        ("\\F\\\\S\\\\T\\\\R\\\\E\\", "|^&~\\"),
        ("line 1\\.br\\line 2", "line 1\nline 2"),
        ("\\H\\high\\N\\normal", "highnormal"),
        ("a\\.sp\\b\\.sp2\\c\\.in+4\\d\\.ti-4\\e\\.sk3\\f", "abcdef"),
        ("\\.ce\\centred\\.fi\\\\.nf\\", "centred"),
        ("\\X41\\\\X4243\\", "ABC"),
        ("\\X0D0A\\", "\r\n"),
    ],
)
def test_escape_sequences(escaped: str, text: str) -> None:
    assert obx_5(parse(oru(f"OBX|1|FT|X||{escaped}"))) == text


@pytest.mark.parametrize(
    "literal",
    [
        "\\Zlocal\\",  # locally defined: meaningless here
        "\\C2842\\ and \\M2442\\",  # character set switches are not supported
        "\\Q\\",
        "\\\\",
        "\\X\\ \\XZZ\\ \\X123\\",  # no, bad or odd hex digits
        "C:\\path\\to\\file",
        "ends with \\",
        "\\.br",
        "\\h\\",
    ],
)
def test_unknown_or_unterminated_escapes_are_kept_as_text(literal: str) -> None:
    assert obx_5(parse(oru(f"OBX|1|ST|X||{literal}"))) == literal


def test_hex_escapes_decode_in_the_message_charset() -> None:
    latin_1 = oru("OBX|1|ST|X||Caf\\XE9\\", msh=msh_with_charset("8859/1"))
    utf_8 = oru("OBX|1|ST|X||Caf\\XC3A9\\", msh=msh_with_charset("UNICODE UTF-8"))
    ascii_ = oru("OBX|1|ST|X||Caf\\XE9\\")
    assert obx_5(parse(latin_1.encode("latin-1"))) == "Café"
    assert obx_5(parse(latin_1)) == "Café"
    assert obx_5(parse(utf_8.encode())) == "Café"
    assert obx_5(parse(ascii_)) == "Caf\\XE9\\"  # 0xE9 is no ASCII character


def test_raw_keeps_the_field_as_received() -> None:
    obx = only(parse(oru("OBX|1|ST|X||a\\S\\b^c")), "OBX")
    assert obx.raw(5) == "a\\S\\b^c"
    assert obx.field(5) == [[["a^b"], ["c"]]]


def test_escape_writes_what_unescape_reads() -> None:
    encoding = Encoding(truncation="#")
    value = "a|b^c~d\\e&f#g\nh\ri"
    assert escape(value, encoding) == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f\\P\\g\\.br\\h\\X0D\\i"
    assert unescape(escape(value, encoding), encoding) == value


# --- MSH-18 and bytes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msh18", "charset", "value"),
    [
        ("", "ascii", "plain"),
        ("ASCII", "ascii", "plain"),
        ("8859/1", "latin-1", "Müller"),
        ("8859/15", "iso8859-15", "5 €"),
        ("8859/5", "iso8859-5", "Иванов"),
        ("UNICODE UTF-8", "utf-8", "Müller 李"),
        ("UTF-8", "utf-8", "Ωmega"),
        ("unicode  utf-8", "utf-8", "Ωmega"),
        ("UNICODE", "utf-8", "Ωmega"),
        ("GB 18030-2000", "gb18030", "李小龙"),
        ("KS X 1001", "euc_kr", "김철수"),
        ("BIG-5", "big5", "陳大文"),
        ("ISO IR87", "iso2022_jp", "山田太郎"),
        ("UNICODE UTF-8~8859/1", "utf-8", "Müller"),  # the first repetition is the default
    ],
)
def test_msh_18_names_the_charset_of_the_bytes(msh18: str, charset: str, value: str) -> None:
    message = parse(oru(f"PID|1||MRN1||{value}", msh=msh_with_charset(msh18)).encode(charset))
    assert message.charset == charset
    assert only(message).get(5) == value


def test_bytes_that_do_not_decode_use_the_senders_fallback_charset() -> None:
    data = oru("PID|1||MRN1||Müller – “Jo”").encode("cp1252")
    message = parse(data, fallback_charset="cp1252")
    assert message.charset == "cp1252"
    assert only(message).get(5) == "Müller – “Jo”"


def test_undecodable_bytes_without_a_fallback_are_a_table_value_error_at_msh_18() -> None:
    error = error_of(oru("PID|1||MRN1||Müller").encode("cp1252"))
    assert (error.code, error.location) == ("103", "MSH^1^18")
    declared_utf_8 = oru("PID|1||MRN1||Müller", msh=msh_with_charset("UNICODE UTF-8"))
    assert error_of(declared_utf_8.encode("cp1252"), "ascii").code == "103"


def test_an_unknown_msh_18_is_a_table_value_error() -> None:
    error = error_of(oru(msh=msh_with_charset("KLINGON")))
    assert (error.code, error.location) == ("103", "MSH^1^18")
    assert "KLINGON" in str(error)


def test_a_utf_8_byte_order_mark_outranks_msh_18() -> None:
    data = b"\xef\xbb\xbf" + oru("PID|1||MRN1||Müller", msh=msh_with_charset("ASCII")).encode()
    message = parse(data)
    assert (message.charset, only(message).get(5)) == ("utf-8", "Müller")


def test_text_is_taken_as_decoded_and_msh_18_only_decodes_hex_escapes() -> None:
    message = parse(oru("PID|1||MRN1||Müller\\XE9\\", msh=msh_with_charset("8859/1")))
    assert message.charset == "latin-1"
    assert only(message).get(5) == "Mülleré"


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "location"),
    [
        ("MSH", "MSH^1^1"),
        ("MSH|", "MSH^1^2"),
        ("MSH|^~\\&|LAB|HOSP|GW|REMS|20240312", "MSH^1^9"),
        ("MSH|^~\\&|LAB|HOSP|GW|REMS|20240312||ORU^R01", "MSH^1^10"),
        ("MSH|^~\\&|LAB|HOSP|GW|REMS|20240312||ORU^R01|C1|P", "MSH^1^12"),
        ("MSH|^~\\&|LAB|HOSP|GW|REMS|20240312||ORU^R01||P|2.5", "MSH^1^10"),
        ("MSH|^~\\&|LAB|HOSP|GW|REMS|20240312||ORU^R01|C1|P|  ", "MSH^1^12"),
        ("", "MSH^1"),
        ("\r\n\r\n", "MSH^1"),
        ("PID|1||MRN1\rOBX|1", "MSH^1"),
    ],
)
def test_a_truncated_message_is_a_required_field_error_naming_the_field(
    text: str, location: str
) -> None:
    error = error_of(text)
    assert (error.code, error.location) == ("101", location)
    assert isinstance(error, ValueError)
    assert "\n" not in str(error)


def test_a_required_field_missing_from_a_later_msh_of_a_batch_names_that_msh() -> None:
    error = error_of(f"BHS|^~\\&\r{MSH}\rMSH|^~\\&|LAB|HOSP|GW|REMS|20240312||ORU^R01\rBTS|2")
    assert (error.code, error.location) == ("101", "MSH^2^10")


@pytest.mark.parametrize(
    "msh",
    [
        "MSH|^~\\|",  # three encoding characters, the subcomponent separator missing
        "MSH|^~|",  # two
        "MSH|^~\\&#$|",  # six
        "MSH|^^\\&|",  # not distinct
        "MSH|^~\\||",  # the field separator again
        "MSH|^~\\a|",  # alphanumeric
        "MSH1^~\\&1",  # alphanumeric field separator
        "MSH|^ \\&|",  # white space
    ],
)
def test_bad_encoding_characters_are_a_data_type_error_at_msh_2(msh: str) -> None:
    error = error_of(msh + "LAB|HOSP|GW|REMS|20240312||ORU^R01|C1|P|2.5")
    assert (error.code, error.location) == ("102", "MSH^1^2")


def test_three_encoding_characters_have_no_escape_character_and_a_backslash_is_text() -> None:
    """``MSH|^~&|`` as some analysers send it: component, repetition, subcomponent."""
    message = parse(
        oru(
            "PID|1||MRN1^^^GH&1.2.3&ISO~E-1",
            "NTE|1|L|run 2\\H\\3 \\X41\\",
            msh=MSH.replace("^~\\&", "^~&"),
        )
    )
    assert message.encoding.escape is None
    pid = only(message)
    assert (pid.get(3, 4, 2), pid.get(3, repetition=1)) == ("1.2.3", "E-1")
    assert only(message, "NTE").get(3) == "run 2\\H\\3 \\X41\\"  # no escape sequences
    assert only(message, "NTE").components(3) == ["run 2\\H\\3 \\X41\\"]
    assert only(message, "NTE").field(3) == [[["run 2\\H\\3 \\X41\\"]]]


def test_a_value_with_a_delimiter_cannot_be_escaped_without_an_escape_character() -> None:
    encoding = parse(oru(msh=MSH.replace("^~\\&", "^~&"))).encoding
    assert escape("MRN-1", encoding) == "MRN-1"
    with pytest.raises(ValueError, match="escape character"):
        escape("A^B", encoding)


def test_a_leading_byte_order_mark_is_dropped_from_bytes_and_from_text() -> None:
    text = oru("PID|1||MRN1||Müller")
    assert only(parse(codecs.BOM_UTF8 + text.encode())).get(5) == "Müller"
    assert parse("\ufeff" + text).msh.get(10) == "MSG001"


def test_split_batch_gives_a_file_s_byte_order_mark_to_each_message() -> None:
    data = codecs.BOM_UTF8 + f"{oru()}{oru()}".encode()
    messages = split_batch(data)
    assert len(messages) == 2 and all(m.startswith(codecs.BOM_UTF8 + b"MSH|") for m in messages)


def test_a_message_that_does_not_start_with_msh_is_a_segment_sequence_error() -> None:
    error = error_of(f"PID|1||MRN1\r{MSH}\r")
    assert (error.code, error.location) == ("100", "PID^1")


def test_a_line_without_a_segment_id_is_a_segment_sequence_error() -> None:
    error = error_of(oru("NTE|1||first line of a note", "wrapped second line of the note"))
    assert error.code == "100"
    assert "segment 3" in str(error)
    assert "wrapped" not in str(error)  # it may be patient data


# --- batches ------------------------------------------------------------------------------------

BATCH = "\r".join(
    [
        "FHS|^~\\&|LAB|HOSP|||20240312",
        "BHS|^~\\&|LAB|HOSP|||20240312",
        MSH,
        "PID|1||MRN1",
        MSH.replace("MSG001", "MSG002"),
        "PID|1||MRN2",
        "BTS|2",
        "FTS|1",
        "",
    ]
)


def test_a_batch_parses_with_its_envelope_segments() -> None:
    message = parse(BATCH)
    names = [segment.name for segment in message.segments]
    assert names == ["FHS", "BHS", "MSH", "PID", "MSH", "PID", "BTS", "FTS"]
    assert message.msh.get(10) == "MSG001"
    assert only(message, "FHS").field(2) == [[["^~\\&"]]]
    assert only(message, "FHS").get(3) == "LAB"


def test_split_batch_gives_each_message_without_the_envelope() -> None:
    messages = split_batch(BATCH.replace("\r", "\r\n").encode())
    assert [only(parse(m)).get(3) for m in messages] == ["MRN1", "MRN2"]
    assert messages[0] == f"{MSH}\rPID|1||MRN1\r".encode()


def test_split_batch_splits_plain_concatenated_messages() -> None:
    data = oru("PID|1||MRN1") + oru("PID|1||MRN2")
    assert len(split_batch(data.encode())) == 2
    assert split_batch(b"FHS|^~\\&\rFTS|0\r") == []


def test_split_batch_checks_the_bts_1_message_count() -> None:
    with pytest.raises(HL7ParseError) as caught:
        split_batch(BATCH.replace("BTS|2", "BTS|3").encode())
    assert (caught.value.code, caught.value.location) == ("100", "BTS^1^1")


def test_split_batch_rejects_segments_before_the_first_msh() -> None:
    with pytest.raises(HL7ParseError) as caught:
        split_batch(f"PID|1\r{MSH}\r".encode())
    assert caught.value.code == "100"


# --- property: ER7 round trip -------------------------------------------------------------------

SEGMENT_IDS = ["PID", "PV1", "ORC", "OBR", "OBX", "NTE", "SPM", "NK1", "AL1", "DG1", "ZXA", "Z01"]
DELIMITERS = "|^~\\&#!@$%*+/:;=?"
TEXT = st.text(
    st.sampled_from([*"aZ09 .-_éß€李", "\n", "\r", *DELIMITERS]) | st.characters(codec="utf-8"),
    max_size=8,
)
SUBCOMPONENTS = st.lists(TEXT, min_size=1, max_size=3)
COMPONENTS = st.lists(SUBCOMPONENTS, min_size=1, max_size=4)
FIELDS = st.lists(COMPONENTS, min_size=1, max_size=3)
SEGMENTS = st.tuples(st.sampled_from(SEGMENT_IDS), st.lists(FIELDS, max_size=8))
ENCODINGS = st.lists(st.sampled_from(DELIMITERS), min_size=5, max_size=6, unique=True).map(
    lambda chars: Encoding(*chars)
)


def er7_field(field: FieldValues, encoding: Encoding) -> str:
    return encoding.repetition.join(
        encoding.component.join(
            encoding.subcomponent.join(escape(text, encoding) for text in component)
            for component in repetition
        )
        for repetition in field
    )


def msh_of(encoding: Encoding, msh18: str = "UNICODE UTF-8") -> str:
    characters = "".join(
        [encoding.component, encoding.repetition, encoding.escape, encoding.subcomponent]
    ) + (encoding.truncation or "")
    fields = ["MSH", characters, "LAB", "HOSP", "GW", "REMS", "20240312071500", ""]
    fields += [f"ORU{encoding.component}R01", "CTRL1", "P", "2.5", "", "", "", "", "", msh18]
    return encoding.field.join(fields)


def er7_message(
    segments: list[tuple[str, list[FieldValues]]], encoding: Encoding, ending: str = "\r"
) -> str:
    lines = [msh_of(encoding)]
    for name, fields in segments:
        lines.append(encoding.field.join([name, *(er7_field(f, encoding) for f in fields)]))
    return ending.join(lines) + ending


def assert_segment_reads(segment: Segment, fields: list[FieldValues], encoding: Encoding) -> None:
    for n, field in enumerate(fields, start=1):
        raw = er7_field(field, encoding)
        expected = field if raw else []
        assert segment.raw(n) == raw
        assert segment.field(n) == expected
        assert segment.repetitions(n) == len(expected)
        for r, repetition in enumerate(expected):
            assert segment.components(n, r) == [component[0] for component in repetition]
            for c, component in enumerate(repetition, start=1):
                for s, text in enumerate(component, start=1):
                    assert segment.get(n, c, s, repetition=r) == text
            assert segment.get(n, len(repetition) + 1, repetition=r) == ""
    assert segment.field(len(fields) + 1) == []
    assert segment.components(len(fields) + 1) == []


@SETTINGS
@given(st.lists(SEGMENTS, max_size=6), ENCODINGS, st.sampled_from(["\r", "\n", "\r\n"]))
def test_values_escaped_into_er7_read_back_unchanged(
    segments: list[tuple[str, list[FieldValues]]], encoding: Encoding, ending: str
) -> None:
    text = er7_message(segments, encoding, ending)
    for message in (parse(text), parse(text.encode())):
        assert message.encoding == encoding
        assert message.charset == "utf-8"
        assert [s.name for s in message.segments] == ["MSH", *(name for name, _ in segments)]
        for segment, (_, fields) in zip(message.segments[1:], segments, strict=True):
            assert_segment_reads(segment, fields, encoding)


# --- properties: hl7apy and python-hl7 read the same structure ----------------------------------

# No white space at the edges (hl7apy strips segments and drops blank values) and no CR/LF
# (hl7apy escapes \.br\ and \X0D\ once more when it writes ER7).
ORACLE_TEXT = st.text(st.sampled_from([*"aZ09 .-_éß€李", *DELIMITERS]), max_size=6).map(str.strip)
# Four encoding characters: hl7apy takes a fifth only from v2.7.
ORACLE_ENCODINGS = st.just(Encoding()) | st.lists(
    st.sampled_from(DELIMITERS), min_size=5, max_size=5, unique=True
).map(lambda chars: Encoding(*chars))
CE = (1, 1, 1, 1, 1, 1)  # the most subcomponents each component of the type may have
CX = (1, 1, 1, 3, 1, 3)  # CX-4 and CX-6 are HD
XPN = (5, 1, 1, 1, 1)  # XPN-1 is FN
VARIES = (3, 3, 3, 3)
ST = (1,)
Values = dict[tuple[int, int, int, int], str]  # (field, repetition, component, subcomponent)


@st.composite
def oru_r01(draw: st.DrawFn) -> tuple[str, Encoding]:
    """An ORU^R01 v2.5 with generated PID-3/5, OBR-2/4, OBX-3/5/6/7/8 and NTE-3 in their types."""
    encoding = draw(ORACLE_ENCODINGS)

    def field(shape: tuple[int, ...], repeats: int = 1) -> str:
        def repetition() -> list[list[str]]:
            size = draw(st.integers(1, len(shape)))
            return [draw(st.lists(ORACLE_TEXT, min_size=1, max_size=m)) for m in shape[:size]]

        return er7_field([repetition() for _ in range(draw(st.integers(1, repeats)))], encoding)

    date = "20240312071500"
    segments = [["PID", "1", "", field(CX, 3), "", field(XPN), "", "19800101", "F"]]
    for order in range(1, draw(st.integers(1, 2)) + 1):
        segments.append(["OBR", str(order), field((1, 1, 1, 1)), "", field(CE), "", "", date])
        for n in range(1, draw(st.integers(1, 4)) + 1):
            obx = ["OBX", str(n), "ST", field(CE), "", field(VARIES), field(CE), field(ST)]
            segments.append([*obx, field(ST, 2), "", "", "F", "", "", date])
            if draw(st.booleans()):
                segments.append(["NTE", str(n), "L", field(ST, 2)])
    lines = [msh_of(encoding, ""), *(encoding.field.join(fields) for fields in segments)]
    return "\r".join(lines) + "\r", encoding


def our_values(segment: Segment) -> Values:
    return {
        (n, r, c, s): text
        for n in range(3 if segment.name == "MSH" else 1, 30)  # MSH-1/2 are no values
        for r, repetition in enumerate(segment.field(n))
        for c, component in enumerate(repetition, start=1)
        for s, text in enumerate(component, start=1)
        if text
    }


def hl7apy_values(segment: Any, encoding: Encoding) -> tuple[Values, dict[int, int]]:
    """The non-empty values hl7apy reads (unescaped by us: it has no unescape) and repetitions."""
    values: Values = {}
    repetitions: dict[int, int] = {}
    for field in segment.children:
        n = int(field.name.rsplit("_", 1)[1])
        r = repetitions[n] = repetitions.get(n, 0) + 1
        if segment.name == "MSH" and n <= 2:
            continue
        for c, component in hl7apy_positions(field.children):
            for s, subcomponent in hl7apy_positions(component.children):
                if text := unescape(subcomponent.to_er7(), encoding):
                    values[(n, r - 1, c, s)] = text
    return values, repetitions


def hl7apy_positions(elements: list[Any]) -> list[tuple[int, Any]]:
    """hl7apy drops empty named elements (CX_4, HD_2) and keeps unnamed ones: their positions."""
    positions, position = [], 0
    for element in elements:
        named = re.search(r"_(\d+)$", element.name or "")
        position = int(named.group(1)) if named else position + 1
        positions.append((position, element))
    return positions


@SETTINGS
@given(oru_r01())
def test_hl7apy_reads_the_same_segments_fields_and_values(case: tuple[str, Encoding]) -> None:
    text, encoding = case
    ours = parse(text)
    theirs = parse_message(text, find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT)
    assert [s.name for s in theirs.children] == [s.name for s in ours.segments]
    for our_segment, their_segment in zip(ours.segments, theirs.children, strict=True):
        values, repetitions = hl7apy_values(their_segment, encoding)
        assert our_values(our_segment) == values
        for n, count in repetitions.items():
            assert our_segment.repetitions(n) == count, n


def python_hl7_field(field: hl7.Field, message: hl7.Message) -> FieldValues:
    """python-hl7's field as repetitions → components → subcomponents, unescaped by python-hl7."""

    def repetition(container: hl7.Container) -> list[list[str]]:
        return [
            [message.unescape(text) for text in part]
            if isinstance(part, hl7.Component)
            else [message.unescape(part)]
            for part in container
        ]

    if str(field) == "":
        return []
    if all(isinstance(part, hl7.Repetition) for part in field):
        return [repetition(part) for part in field]
    return [repetition(field)]


@SETTINGS
@given(oru_r01())
def test_python_hl7_reads_the_same_repetitions_components_and_values(
    case: tuple[str, Encoding],
) -> None:
    text, _ = case
    ours = parse(text)
    theirs = hl7.parse(text)
    assert [str(s[0]) for s in theirs] == [s.name for s in ours.segments]
    for our_segment, their_segment in zip(ours.segments, theirs, strict=True):
        first = 1
        if our_segment.name == "MSH":
            assert [str(their_segment[1]), str(their_segment[2])] == [
                our_segment.raw(1),
                our_segment.raw(2),
            ]
            first = 3
        for n in range(first, len(their_segment)):
            assert our_segment.field(n) == python_hl7_field(their_segment[n], theirs), n
        assert our_segment.raw(len(their_segment)) == ""
