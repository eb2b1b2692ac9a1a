"""ORU^R01 parses per second: our tokenizer, python-hl7 and hl7apy on the same 12-segment message.

Each library parses the message and, in the second measure, reads the same ten kinds of value
(PID-3 identifiers and PID-5/7, OBX-3/5/6/8/11/14 of every OBX, an NTE-3 note); the values are
checked to agree before timing. Medians of several runs; our tokenizer is given bytes, as the
MLLP listener does, the others text.

    python bench/hl7_tokenizer.py [--runs 5] [--seconds 1.0] [--hl7apy-messages 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hl7
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from mappings.hl7v2.tokenizer import parse, unescape

ORU = "\r".join(
    [
        "MSH|^~\\&|LAB|GENERAL HOSPITAL|REMS-GW|REMS|20240312081500-0500||ORU^R01^ORU_R01|"
        "MSG20240312081500001|P|2.5.1|||AL|NE||UNICODE UTF-8",
        "PID|1||MRN0012345^^^GH&1.2.840.114350.1.13.0.1.7.5.737384.14&ISO^MR~"
        "123456789^^^SSA&2.16.840.1.113883.4.1&ISO^SS||DOE^JANE^Q^^MS||19800214|F|||"
        "12 MAIN ST^^SPRINGFIELD^IL^62701^USA||^PRN^PH^^1^217^5550100",
        "PV1|1|O|CLINIC^^^GH||||1234567893^SMITH^JOHN^^^DR^MD",
        "ORC|RE|ORD448811^GH|LAB998877^LAB||CM||||20240312071000-0500",
        "OBR|1|ORD448811^GH|LAB998877^LAB|57021-8^CBC W Auto Differential panel - Blood^LN|||"
        "20240312071500-0500|||||||||1234567893^SMITH^JOHN||||||20240312081000-0500|||F",
        "OBX|1|NM|6690-2^Leukocytes [#/volume] in Blood by Automated count^LN||4.1|"
        "10*3/uL^thousand per microliter^UCUM|4.0-11.0|N|||F|||20240312071500-0500",
        "OBX|2|NM|718-7^Hemoglobin [Mass/volume] in Blood^LN||13.2|g/dL^gram per deciliter^UCUM|"
        "12.0-16.0|N|||F|||20240312071500-0500",
        "OBX|3|NM|777-3^Platelets [#/volume] in Blood by Automated count^LN||250|"
        "10*3/uL^thousand per microliter^UCUM|150-400|N|||F|||20240312071500-0500",
        "OBX|4|NM|751-8^Neutrophils [#/volume] in Blood by Automated count^LN||1.8|"
        "10*3/uL^thousand per microliter^UCUM|2.0-7.5|L|||F|||20240312071500-0500",
        "OBX|5|NM|731-0^Lymphocytes [#/volume] in Blood by Automated count^LN||1.6|"
        "10*3/uL^thousand per microliter^UCUM|1.0-4.0|N|||F|||20240312071500-0500",
        "NTE|1|L|Specimen slightly hemolyzed\\.br\\Repeat draw advised \\T\\ ANC confirmed "
        "by manual differential",
        "SPM|1|SP77665544^LAB||BLDV^Blood venous^HL70487|||||||||||||20240312071500-0500",
    ]
)
ORU_BYTES = ORU.encode("utf-8")
Values = tuple[str, ...]


def ours(data: bytes) -> Values:
    message = parse(data)
    pid = message.first("PID")
    assert pid is not None
    values = [pid.get(3, 1, repetition=r) for r in range(pid.repetitions(3))]
    values += [pid.get(3, 4, 2), pid.get(5, 1), pid.get(7)]
    for obx in message.all("OBX"):
        values += [obx.get(3, 1), obx.get(5), obx.get(6, 1), obx.get(8), obx.get(11), obx.get(14)]
    nte = message.first("NTE")
    values.append(nte.get(3) if nte else "")
    return tuple(values)


def python_hl7(text: str) -> Values:
    message = hl7.parse(text)
    pid = message.segment("PID")
    values = [str(repetition[0]) for repetition in pid[3]]
    values += [str(pid[3][0][3][1]), str(pid[5][0][0]), str(pid[7])]
    for obx in message.segments("OBX"):
        values += [str(obx[3][0][0]), str(obx[5]), str(obx[6][0][0])]
        values += [str(obx[8]), str(obx[11]), str(obx[14])]
    values.append(message.unescape(str(message.segment("NTE")[3])))
    return tuple(values)


def hl7apy(text: str) -> Values:
    message = parse_message(text, find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT)
    pid = message.pid
    values = [identifier.cx_1.to_er7() for identifier in pid.pid_3]
    values += [pid.pid_3[0].cx_4.hd_2.to_er7(), pid.pid_5.xpn_1.to_er7(), pid.pid_7.to_er7()]
    for obx in message.obx:
        values += [obx.obx_3.ce_1.to_er7(), obx.obx_5.to_er7(), obx.obx_6.ce_1.to_er7()]
        values += [obx.obx_8.to_er7(), obx.obx_11.to_er7(), obx.obx_14.to_er7()]
    # as received: to_er7() would escape the \.br\ once more; hl7apy has no unescape
    values.append(message.nte.nte_3.children[0].children[0].value.value)
    return tuple(values)


def rate(work: Callable[[], object], messages: int) -> float:
    started = time.perf_counter()
    for _ in range(messages):
        work()
    return messages / (time.perf_counter() - started)


def calibrate(work: Callable[[], object], seconds: float) -> int:
    """How many messages make one run of about `seconds`."""
    n = 10
    while True:
        started = time.perf_counter()
        for _ in range(n):
            work()
        elapsed = time.perf_counter() - started
        if elapsed > 0.2 or n >= 1_000_000:
            return max(10, int(n * seconds / elapsed))
        n *= 10


def check_agreement() -> None:
    expected = ours(ORU_BYTES)
    # python-hl7 unescapes \.br\ to CR where we give LF; hl7apy leaves the note escaped
    from_python_hl7 = tuple(value.replace("\r", "\n") for value in python_hl7(ORU))
    from_hl7apy = tuple(unescape(value) for value in hl7apy(ORU))
    for name, values in (("python-hl7", from_python_hl7), ("hl7apy", from_hl7apy)):
        if values != expected:
            raise SystemExit(f"{name} reads other values:\n{values}\nours:\n{expected}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="about this long per run")
    parser.add_argument("--hl7apy-messages", type=int, default=100, help="messages per hl7apy run")
    args = parser.parse_args()
    check_agreement()

    cases: list[tuple[str, Callable[[], object], int | None]] = [
        ("ours: parse", lambda: parse(ORU_BYTES), None),
        ("ours: parse + values", lambda: ours(ORU_BYTES), None),
        ("python-hl7: parse", lambda: hl7.parse(ORU), None),
        ("python-hl7: parse + values", lambda: python_hl7(ORU), None),
        ("hl7apy: parse", lambda: _hl7apy_parse(ORU), args.hl7apy_messages),
        ("hl7apy: parse + values", lambda: hl7apy(ORU), args.hl7apy_messages),
    ]
    python = sys.version.split()[0]
    print(f"{len(ORU_BYTES)}-byte ORU^R01, 12 segments; {args.runs} runs; Python {python}")
    print(f"{'measure':30} {'median/s':>10} {'µs/msg':>8}  runs")
    medians: dict[str, float] = {}
    for label, work, messages in cases:
        count = messages or calibrate(work, args.seconds)
        runs = [rate(work, count) for _ in range(args.runs)]
        medians[label] = median = statistics.median(runs)
        shown = " ".join(f"{run:.0f}" for run in runs)
        print(f"{label:30} {median:10.0f} {1e6 / median:8.1f}  {shown}")
    base = medians["ours: parse + values"]
    for label in ("python-hl7: parse + values", "hl7apy: parse + values"):
        print(f"ours is {base / medians[label]:.0f}x {label.split(':')[0]} (parse + values)")


def _hl7apy_parse(text: str) -> object:
    return parse_message(text, find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT)


if __name__ == "__main__":
    main()
