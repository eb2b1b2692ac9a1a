"""HL7 v2 ER7 tokenizer: segments, fields, repetitions, components and subcomponents.

Built for the gateway's hot path: a message is split into segments and fields once; a field is
split into repetitions, components and subcomponents, and unescaped, only when it is read. The
structure is property-tested against hl7apy and python-hl7 (tests/test_hl7_tokenizer.py).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from functools import lru_cache

HEADER_SEGMENTS = frozenset({"MSH", "FHS", "BHS"})
_BATCH_ENVELOPE = frozenset({b"FHS", b"BHS", b"BTS", b"FTS"})
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_FIRST_MSH = re.compile(r"(?:\A|[\r\n])(MSH[^\r\n]*)")
_FORMATTING = re.compile(r"H|N|\.(?:sp|in|ti|sk)\s*[+-]?\d*|\.(?:ce|fi|nf)")
_REQUIRED_MSH_FIELDS = {
    9: "MSH-9 (message type)",
    10: "MSH-10 (message control ID)",
    12: "MSH-12 (version ID)",
}

# HL7 table 0211 → Python codec. ISO IR14 (JIS X 0201) and CNS 11643-1992 have no Python codec;
# in UTF-16/UTF-32 MSH-18 could not be read before decoding, and v2.8 forbids them.
_CHARSETS = {
    "": "ascii",
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "8859/1": "latin-1",
    **{f"8859/{n}": f"iso8859-{n}" for n in (2, 3, 4, 5, 6, 7, 8, 9, 15)},
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_1",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
    "UNICODE": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
}
# ISO 2022 switches sets with ESC sequences, which are ASCII bytes: ASCII data may need decoding.
_STATEFUL_CHARSETS = frozenset({"iso2022_jp", "iso2022_jp_1"})

FieldValues = list[list[list[str]]]  # repetitions → components → subcomponents


class HL7ParseError(ValueError):
    """A message that cannot be tokenized.

    `code` is the HL7 table 0357 code (ERR-3), `location` the ERR-2 location ("MSH^1^9") or "".
    """

    def __init__(self, code: str, reason: str, location: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.location = location


@dataclass(frozen=True)
class Encoding:
    """The delimiters of MSH-1 and MSH-2 (the truncation character exists from v2.7). ``escape``
    is None for an MSH-2 of three characters (``^~&``, as some analysers send): nothing is an
    escape sequence then."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str | None = "\\"
    subcomponent: str = "&"
    truncation: str | None = None


DEFAULT_ENCODING = Encoding()


class Segment:
    """One segment; fields are split and unescaped when first read."""

    __slots__ = ("_charset", "_encoding", "_fields", "_split", "name")

    def __init__(
        self, fields: list[str], encoding: Encoding = DEFAULT_ENCODING, charset: str = "ascii"
    ) -> None:
        """`fields[0]` is the segment ID and `fields[n]` the raw text of field n (HL7 numbering)."""
        self.name = fields[0]
        self._fields = fields
        self._encoding = encoding
        self._charset = charset
        self._split: dict[int, FieldValues] = {}

    def __repr__(self) -> str:
        return f"<Segment {self.name} with {len(self._fields) - 1} fields>"

    def raw(self, n: int) -> str:
        """Field n as received (still escaped); '' when absent."""
        if n < 1:
            raise ValueError(f"HL7 field numbers start at 1, not {n}")
        return self._fields[n] if n < len(self._fields) else ""

    def raw_fields(self) -> list[str]:
        """Every field as received, from field 1 (MSH-1 for a header); shared: do not change it."""
        return self._fields[1:]

    def field(self, n: int) -> FieldValues:
        """Field n as repetitions → components → subcomponents, unescaped; [] when empty.

        The lists are shared between calls: read them, do not change them.
        """
        split = self._split.get(n)
        if split is None:
            split = self._split[n] = self._split_field(n)
        return split

    def get(self, n: int, component: int = 1, subcomponent: int = 1, repetition: int = 0) -> str:
        """One value; components and subcomponents count from 1, repetitions from 0."""
        if component < 1 or subcomponent < 1 or repetition < 0:
            raise ValueError("components and subcomponents count from 1, repetitions from 0")
        raw = self.raw(n)
        if n <= 2 and self.name in HEADER_SEGMENTS:
            return raw if component == subcomponent == 1 and repetition == 0 else ""
        # The hot path: split only along the way to the one value asked for, and only where a
        # separator is present (most values have none: no list to build).
        encoding = self._encoding
        value = _nth(raw, encoding.repetition, repetition)
        value = _nth(value, encoding.component, component - 1)
        value = _nth(value, encoding.subcomponent, subcomponent - 1)
        if encoding.escape is None or encoding.escape not in value:
            return value
        return unescape(value, encoding, self._charset)

    def components(self, n: int, repetition: int = 0) -> list[str]:
        """The components of one repetition of field n (each its first subcomponent), unescaped;
        [] when absent. For reading a coded value's parts at once."""
        raw = self.raw(n)
        if n <= 2 and self.name in HEADER_SEGMENTS:
            return [raw] if raw and repetition == 0 else []
        encoding = self._encoding
        if not raw:
            return []
        if encoding.repetition in raw:
            repetitions = raw.split(encoding.repetition)
            if repetition >= len(repetitions):
                return []
            text = repetitions[repetition]
        elif repetition:
            return []
        else:
            text = raw
        parts = text.split(encoding.component)
        if encoding.subcomponent in text:
            parts = [part.split(encoding.subcomponent, 1)[0] for part in parts]
        if encoding.escape is not None and encoding.escape in text:
            parts = [unescape(part, encoding, self._charset) for part in parts]
        return parts

    def repetitions(self, n: int) -> int:
        return len(self.field(n))

    def _split_field(self, n: int) -> FieldValues:
        raw = self.raw(n)
        if not raw:
            return []
        if n <= 2 and self.name in HEADER_SEGMENTS:
            return [[[raw]]]  # MSH-1 and MSH-2 are the delimiters themselves
        encoding = self._encoding
        component_separator, subcomponent_separator = encoding.component, encoding.subcomponent
        if subcomponent_separator in raw:
            split = [
                [
                    part.split(subcomponent_separator)
                    for part in repetition.split(component_separator)
                ]
                for repetition in raw.split(encoding.repetition)
            ]
        else:
            split = [
                [[part] for part in repetition.split(component_separator)]
                for repetition in raw.split(encoding.repetition)
            ]
        if encoding.escape is None or encoding.escape not in raw:
            return split
        charset = self._charset
        return [
            [[unescape(text, encoding, charset) for text in component] for component in repetition]
            for repetition in split
        ]


def _nth(text: str, separator: str, n: int) -> str:
    """The n-th part (from 0) of ``text`` cut at ``separator``; '' when there are fewer."""
    if separator not in text:
        return text if n == 0 else ""
    parts = text.split(separator)
    return parts[n] if n < len(parts) else ""


class Message:
    """A tokenized message (or batch): its segments in order, as received."""

    __slots__ = ("charset", "encoding", "segments")

    def __init__(self, encoding: Encoding, segments: list[Segment], charset: str) -> None:
        self.encoding = encoding
        self.segments = segments
        self.charset = charset

    def __repr__(self) -> str:
        return f"<Message {len(self.segments)} segments, {self.charset}>"

    @property
    def msh(self) -> Segment:
        msh = self.first("MSH")
        if msh is None:  # parse() never returns such a message
            raise LookupError("the message has no MSH segment")
        return msh

    def first(self, name: str) -> Segment | None:
        return next((segment for segment in self.segments if segment.name == name), None)

    def all(self, name: str) -> list[Segment]:
        return [segment for segment in self.segments if segment.name == name]


def parse(data: bytes | str, fallback_charset: str | None = None) -> Message:
    r"""Tokenize one message (or an FHS/BHS batch, envelope segments included).

    Bytes are decoded as MSH-18 says, else with `fallback_charset`; text is taken as decoded
    already, MSH-18 then only decides how `\Xhh\` escapes decode. A leading byte order mark is
    dropped either way.
    """
    if isinstance(data, str):
        text, charset = data.removeprefix("\ufeff"), None
    else:
        text, charset = _decode(bytes(data), fallback_charset)
    lines = _segment_lines(text)
    encoding = _header_encoding(lines)
    field_lists = _split_segments(lines, encoding.field)
    msh = _checked_msh(field_lists)
    if charset is None:
        msh18 = msh[18] if len(msh) > 18 else ""
        charset = _codec_for(msh18.split(encoding.repetition)[0])
    segments = [Segment(fields, encoding, charset) for fields in field_lists]
    return Message(encoding, segments, charset)


def unescape(text: str, encoding: Encoding = DEFAULT_ENCODING, charset: str = "ascii") -> str:
    """Resolve the escape sequences of one value (HL7 v2 chapter 2, escape sequences)."""
    escape_char = encoding.escape
    if escape_char is None or escape_char not in text:
        return text
    parts = text.split(escape_char)
    unescaped = [parts[0]]
    last = len(parts) - 1
    i = 1
    while i < last:
        unescaped.append(_escape_sequence(parts[i], encoding, charset))
        unescaped.append(parts[i + 1])
        i += 2
    if i == last:  # an escape character never closed is text, as is an unknown sequence
        unescaped.append(escape_char + parts[last])
    return "".join(unescaped)


def escape(text: str, encoding: Encoding = DEFAULT_ENCODING) -> str:
    r"""Escape one value for ER7: the delimiters as \F\ \S\ \T\ \R\ \E\ \P\, LF as \.br\.
    Without an escape character (MSH-2 of three) a value holding a delimiter cannot be written."""
    if encoding.escape is None:
        if any(delimiter in text for delimiter in _delimiters_by_code(encoding).values()):
            raise ValueError("a delimiter cannot be escaped without an escape character")
        return text
    return text.translate(_escape_table(encoding))


def split_batch(data: bytes) -> list[bytes]:
    """Split a batch file (FHS/BHS … BTS/FTS, or plain concatenated messages) into messages.

    Envelope segments are dropped; each message ends in CR. A BTS-1 count that disagrees with
    the messages of its batch raises HL7ParseError 100 (the file is truncated or damaged). A file
    that starts with a UTF-8 byte order mark gives it to each of its messages, so that each is
    read as UTF-8 (a BOM outranks MSH-18).
    """
    bom = codecs.BOM_UTF8 if data.startswith(codecs.BOM_UTF8) else b""
    data = data[len(bom) :]
    messages: list[list[bytes]] = []
    batch_start = 0
    batches = 0
    for line in _segment_lines_of_bytes(data):
        tag = line[:3]
        if tag == b"MSH":
            messages.append([line])
        elif tag == b"BHS":
            batch_start = len(messages)
        elif tag == b"BTS":
            batches += 1
            _check_batch_count(line, len(messages) - batch_start, batches)
            batch_start = len(messages)
        elif tag in _BATCH_ENVELOPE:
            continue
        elif messages:
            messages[-1].append(line)
        else:
            raise HL7ParseError("100", "a segment precedes the first MSH of the batch")
    return [bom + b"\r".join(segments) + b"\r" for segments in messages]


def _decode(data: bytes, fallback_charset: str | None) -> tuple[str, str]:
    has_bom = data.startswith(codecs.BOM_UTF8)
    if has_bom:
        data = data[len(codecs.BOM_UTF8) :]
    # Latin-1 maps every byte to one character, so MSH-18 can be read before the charset is known.
    provisional = data.decode("latin-1")
    # A byte order mark is what the sender's software actually wrote; it outranks MSH-18.
    charset = "utf-8" if has_bom else _codec_for(_declared_charset(provisional))
    if charset == "latin-1" or (charset not in _STATEFUL_CHARSETS and data.isascii()):
        return provisional, charset
    try:
        return data.decode(charset), charset
    except UnicodeDecodeError as error:
        return _decode_fallback(data, fallback_charset, charset, error)


def _decode_fallback(
    data: bytes, fallback_charset: str | None, charset: str, error: UnicodeDecodeError
) -> tuple[str, str]:
    reason = f"byte {error.start} does not decode as {charset} (MSH-18)"
    if fallback_charset is None:
        raise HL7ParseError("103", f"{reason} and no fallback charset is set", "MSH^1^18")
    try:
        return data.decode(fallback_charset), fallback_charset
    except UnicodeDecodeError:
        raise HL7ParseError("103", f"{reason} nor as {fallback_charset}", "MSH^1^18") from None


def _declared_charset(text: str) -> str:
    """MSH-18's first repetition, read from text that is not decoded yet."""
    match = _FIRST_MSH.search(text)
    msh = match.group(1) if match else ""
    if len(msh) < 4:
        return ""
    fields = msh.split(msh[3])  # MSH-1 is the separator itself, so MSH-n is fields[n - 1]
    if len(fields) < 18:
        return ""
    repetition = fields[1][1:2]
    return fields[17].split(repetition)[0] if repetition else fields[17]


@lru_cache(maxsize=32)
def _codec_for(msh18: str) -> str:
    codec = _CHARSETS.get(" ".join(msh18.split()).upper())
    if codec is None:
        reason = f"MSH-18 {msh18!r} is not a supported character set (HL7 table 0211)"
        raise HL7ParseError("103", reason, "MSH^1^18")
    return codec


def _segment_lines(text: str) -> list[str]:
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return [line for line in text.split("\r") if line and not line.isspace()]


def _segment_lines_of_bytes(data: bytes) -> list[bytes]:
    if b"\n" in data:
        data = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    return [line for line in data.split(b"\r") if line.strip()]


def _header_encoding(lines: list[str]) -> Encoding:
    if not lines:
        raise HL7ParseError("101", "the message is empty: no MSH segment", "MSH^1")
    header = lines[0]
    name = header[:3]
    if name not in HEADER_SEGMENTS:
        raise _missing_header(lines)
    if len(header) < 4:
        raise HL7ParseError("101", f"{name}-1 (field separator) is missing", f"{name}^1^1")
    separator = header[3]
    return _encoding_of(name, separator, header[4:].split(separator, 1)[0])


def _missing_header(lines: list[str]) -> HL7ParseError:
    if not any(line.startswith("MSH") for line in lines):
        return HL7ParseError("101", "no MSH segment", "MSH^1")
    name = lines[0][:3]
    location = f"{name}^1" if _is_segment_id(name) else ""
    return HL7ParseError("100", "the message does not start with MSH (or FHS/BHS)", location)


@lru_cache(maxsize=32)
def _encoding_of(name: str, separator: str, characters: str) -> Encoding:
    location = f"{name}^1^2"
    if not characters:
        raise HL7ParseError("101", f"{name}-2 (encoding characters) is missing", location)
    if len(characters) not in (3, 4, 5):
        reason = f"{name}-2 has {len(characters)} encoding characters, not 4 (or 5 from v2.7)"
        raise HL7ParseError("102", reason, location)
    delimiters = separator + characters
    if len(set(delimiters)) != len(delimiters):
        raise HL7ParseError("102", f"{name}-1 and {name}-2 repeat a delimiter", location)
    if any(char.isalnum() or char.isspace() for char in delimiters):
        reason = f"{name}-1 and {name}-2 may not use letters, digits or white space"
        raise HL7ParseError("102", reason, location)
    if len(characters) == 3:
        return _without_escape(name, separator, characters)
    component, repetition, escape_char, subcomponent = characters[:4]
    truncation = characters[4] if len(characters) == 5 else None
    return Encoding(separator, component, repetition, escape_char, subcomponent, truncation)


def _without_escape(name: str, separator: str, characters: str) -> Encoding:
    r"""``^~&``: component, repetition and subcomponent separators, no escape character. With a
    backslash among them it is the subcomponent separator that is missing (``^~\``): refused."""
    if "\\" in characters:
        reason = f"{name}-2 has 3 encoding characters and the subcomponent separator is missing"
        raise HL7ParseError("102", reason, f"{name}^1^2")
    component, repetition, subcomponent = characters
    return Encoding(separator, component, repetition, None, subcomponent)


def _split_segments(lines: list[str], separator: str) -> list[list[str]]:
    field_lists = []
    for line in lines:
        fields = line.split(separator)
        if fields[0] in HEADER_SEGMENTS:
            fields.insert(1, separator)  # so that fields[n] is MSH-n
        elif not _is_segment_id(fields[0]):
            # A line broken inside a value (a wrapped OBX-5 note) lands here; its text is not
            # quoted because it may be patient data.
            number = len(field_lists) + 1
            reason = f"segment {number} does not start with a segment ID (3 capitals or digits)"
            raise HL7ParseError("100", reason)
        field_lists.append(fields)
    return field_lists


@lru_cache(maxsize=256)
def _is_segment_id(name: str) -> bool:
    return _SEGMENT_ID.fullmatch(name) is not None


def _checked_msh(field_lists: list[list[str]]) -> list[str]:
    """The first MSH's fields, after checking every MSH for MSH-9, MSH-10 and MSH-12."""
    headers = [fields for fields in field_lists if fields[0] == "MSH"]
    if not headers:
        raise HL7ParseError("101", "no MSH segment", "MSH^1")
    for sequence, fields in enumerate(headers, start=1):
        for n, label in _REQUIRED_MSH_FIELDS.items():
            if n >= len(fields):
                reason = f"{label} is missing: MSH ends after field {len(fields) - 1}"
                raise HL7ParseError("101", reason, f"MSH^{sequence}^{n}")
            if not fields[n].strip():
                raise HL7ParseError("101", f"{label} is empty", f"MSH^{sequence}^{n}")
    return headers[0]


def _check_batch_count(bts: bytes, messages: int, sequence: int) -> None:
    count = bts[4:].split(bts[3:4])[0] if len(bts) > 4 else b""
    if count.strip().isdigit() and len(count.strip()) < 10 and int(count) != messages:
        reason = f"BTS-1 counts {int(count)} messages, the batch holds {messages}"
        raise HL7ParseError("100", reason, f"BTS^{sequence}^1")


def _escape_sequence(content: str, encoding: Encoding, charset: str) -> str:
    delimiter = _delimiters_by_code(encoding).get(content)
    if delimiter is not None:
        return delimiter
    if content == ".br":
        return "\n"
    if content.startswith("X") and len(content) > 1:
        try:
            # NUL is no character of any HL7 value (and no PostgreSQL text may hold one)
            return bytes.fromhex(content[1:]).decode(charset).replace("\x00", "")
        except ValueError:  # odd or non-hex digits, or bytes the charset does not know
            pass
    elif _FORMATTING.fullmatch(content):
        return ""
    return f"{encoding.escape}{content}{encoding.escape}"


@lru_cache(maxsize=32)
def _delimiters_by_code(encoding: Encoding) -> dict[str, str]:
    delimiters = {
        "F": encoding.field,
        "S": encoding.component,
        "T": encoding.subcomponent,
        "R": encoding.repetition,
    }
    if encoding.escape is not None:
        delimiters["E"] = encoding.escape
    if encoding.truncation is not None:
        delimiters["P"] = encoding.truncation
    return delimiters


@lru_cache(maxsize=32)
def _escape_table(encoding: Encoding) -> dict[int, str]:
    escape_char = encoding.escape
    table = {
        ord(delimiter): f"{escape_char}{code}{escape_char}"
        for code, delimiter in _delimiters_by_code(encoding).items()
    }
    table[ord("\n")] = f"{escape_char}.br{escape_char}"
    table[ord("\r")] = f"{escape_char}X0D{escape_char}"
    return table
