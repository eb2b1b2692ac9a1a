"""HL7 v2 lab results over MLLP: messages per second and ACK latency, over 1 and over 8
connections, for (a) a transport-only server answering a fixed ACK (the machine's limit), (b)
python-hl7's asyncio MLLP server parsing each message and answering ``create_ack()`` (the library
peer, storing nothing) and (c) the gateway's HL7 listener storing each message durably before its
ACK (SQLite WAL, synchronous=FULL). Prints medians of several runs and ratios against (a) and (b)
measured in the same run.

    python bench/mllp.py [--messages 20000] [--runs 3] [--quick] [--postgres-url URL]

Server and clients share one process and one event loop (the one `serve` runs on: uvloop when
installed), on loopback: each connection sends its share of the messages one after another,
waiting for each ACK before the next message. (Clients in a process of their own were tried: every
server got slower, by the cross-process wake-up each message then costs on two cores.)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import importlib.util
import io
import os
import pstats
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hl7
import hl7.mllp
from sqlalchemy import Engine, func, select

from gateway.app.bootstrap import assemble
from gateway.app.context import UnitContext
from gateway.app.service import RemsService
from gateway.app.values import Source
from gateway.metrics import GatewayMetrics
from gateway.mllp.listener import Hl7Listener
from gateway.mllp.server import END_BLOCK, START_BLOCK, MllpServer, MllpSettings, PeerInfo
from gateway.scenarios.runner import DatabaseFactory
from mappings.hl7v2.senders import SenderConfig, SenderDirectory
from rems_core.model import (
    Identifier,
    LabResult,
    PatientStatusForm,
    PsfType,
    ReportedAnc,
    ResultStatus,
    SubmitterRole,
)
from rems_core.registry import RegistryDocument
from rems_core.rulepack import PackLibrary
from rems_core.store import tables
from rems_core.store.db import make_engine

PRESCRIBER, PHARMACY = "1234567893", "1588667638"
MRN_SYSTEM = "2.16.840.1.113883.3.999.1"
PATIENTS = 200
HOST = "127.0.0.1"
FIXED_ACK = (
    b"MSH|^~\\&|REMS|REMS|LAB|GENERAL HOSP|20220310120000||ACK^R01^ACK|ACK-0|P|2.5.1\rMSA|AA|0\r"
)
#: The sender configuration the gateway runs with: a hospital lab sending LOINC (v2.5.1) and an
#: outreach lab sending a local ANC code (v2.3). Unknown senders are refused.
SENDERS = SenderDirectory(
    accept_unknown=False,
    senders=[
        SenderConfig(application="LAB", facility="GENERAL HOSP"),
        SenderConfig(application="LABSYS", facility="COUNTY", local_codes={"ANC": "751-8"}),
        SenderConfig(application="PHARMSYS", facility="GENERAL HOSP"),
    ],
)
TARGET_8_RATE, TARGET_8_P99_MS, TARGET_1_RATE = 2000.0, 25.0, 600.0
ORDER_TARGET_8_RATE, ORDER_TARGET_8_P99_MS = 800.0, 25.0  # issue 14: decisions durably stored

FAMILY = ["Doe", "Nguyen", "Garcia", "Smith", "Okafor", "Kowalski", "Haddad", "Tanaka", "Silva"]
GIVEN = ["Jane", "John", "Maria", "Wei", "Amara", "Piotr", "Layla", "Kenji", "Ana", "Sam"]
#: ANC units as labs spell them, with the factor to /uL (the pack's count_units).
ANC_UNITS = [
    ("10*3/uL", 1000, 30),
    ("K/uL", 1000, 15),
    ("x10E3/uL", 1000, 15),
    ("10*9/L", 1000, 15),
    ("/uL", 1, 10),
    ("cells/uL", 1, 10),
    ("10^3/uL", 1000, 5),
]


# --- the workload -----------------------------------------------------------------------------


@dataclass
class Workload:
    messages: list[bytes]  # in sending order
    control_ids: list[str]  # MSH-10 of each
    kinds: Counter[str] = field(default_factory=Counter)
    duplicates: dict[int, int] = field(default_factory=dict)  # resend index → original index

    @property
    def unique(self) -> int:
        return len(self.messages) - len(self.duplicates)


def hl7_ts(moment: datetime, offset: bool = True) -> str:
    """An HL7 DTM; with offset, in US Eastern standard time as the hospital's LIS sends it."""
    if not offset:
        return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S")
    local = moment.astimezone(UTC) - timedelta(hours=5)
    return local.strftime("%Y%m%d%H%M%S") + "-0500"


def enrolled_on(today: date) -> date:
    return today - timedelta(days=800)


def registry(today: date) -> RegistryDocument:
    """PATIENTS enrolled patients (some BEN), one certified prescriber and pharmacy."""
    enrolled = enrolled_on(today)
    rng = random.Random(7)
    patients = [
        {
            "id": f"P{i}",
            "identifiers": [{"system": f"urn:oid:{MRN_SYSTEM}", "value": f"MRN{i:06d}"}],
            "name": {"family": rng.choice(FAMILY), "given": rng.choice(GIVEN)},
            "birth_date": (date(1950, 1, 1) + timedelta(days=rng.randrange(18000))).isoformat(),
            "sex": rng.choice("FM"),
            "designation": "ben" if i % 20 == 0 else "general",
            "treatment_start": (enrolled - timedelta(days=30)).isoformat(),
            "enrollment": {
                "by": PRESCRIBER,
                "date": enrolled.isoformat(),
                "anc": {
                    "value": "2100",
                    "unit": "/uL",
                    "drawn": (enrolled - timedelta(days=2)).isoformat(),
                },
            },
        }
        for i in range(PATIENTS)
    ]
    return RegistryDocument.model_validate(
        {
            "prescribers": [{"npi": PRESCRIBER, "certified": True, "name": "Ann Lee"}],
            "pharmacies": [
                {"npi": PHARMACY, "enrollments": [{"setting": "outpatient", "certified": True}]}
            ],
            "patients": patients,
        }
    )


def _anc(rng: random.Random) -> int:
    """An ANC per µL: mostly normal, some mild, moderate or severe neutropenia."""
    roll = rng.random()
    if roll < 0.85:
        return rng.randrange(1500, 7000, 10)
    if roll < 0.95:
        return rng.randrange(1000, 1500, 10)
    if roll < 0.99:
        return rng.randrange(500, 1000, 10)
    return rng.randrange(100, 500, 10)


def _in_unit(anc: int, factor: int) -> str:
    return f"{anc / 1000:.2f}" if factor == 1000 else str(anc)


def _unit(rng: random.Random) -> tuple[str, int]:
    unit, factor, _ = rng.choices(ANC_UNITS, weights=[w for _, _, w in ANC_UNITS])[0]
    return unit, factor


def _header(cid: str, sent: datetime, patient: int, rng: random.Random) -> list[str]:
    mrn = f"MRN{patient:06d}"
    pid3 = f"{mrn}^^^GH&{MRN_SYSTEM}&ISO^MR"
    if patient % 3 == 0:  # a repeated PID-3: the enterprise id first
        pid3 = f"E{patient:07d}^^^EPIC^EPI~{pid3}"
    dob = (date(1950, 1, 1) + timedelta(days=patient % 240 * 83)).strftime("%Y%m%d")
    return [
        f"MSH|^~\\&|LAB|GENERAL HOSP|REMS|REMS|{hl7_ts(sent)}||ORU^R01^ORU_R01|{cid}|P|2.5.1",
        f"PID|1||{pid3}||{FAMILY[patient % len(FAMILY)]}^{GIVEN[patient % len(GIVEN)]}^Q"
        f"||{dob}|{'FM'[patient % 2]}|||{rng.randrange(10, 999)} Main St^^Springfield^IL^62701",
        f"PV1|1|O|CLOZ^^^GH^^^^^Clozapine Clinic||||{PRESCRIBER}^Lee^Ann^^^^^^NPI",
    ]


def _cbc(
    cid: str, n: int, patient: int, drawn: datetime, rng: random.Random, anc: int | None = None
) -> str:
    """A CBC with automated differential: 8 OBX, the ANC (default: drawn from the mix) among
    them in some unit."""
    anc = _anc(rng) if anc is None else anc
    pct = rng.uniform(40, 70)
    wbc = anc / pct * 100 / 1000
    unit, factor = _unit(rng)
    dt, resulted = hl7_ts(drawn), hl7_ts(drawn + timedelta(minutes=45))
    flag = "L" if anc < 1500 else "N"
    panel = "57021-8^CBC W Auto Differential panel - Blood^LN^CBCD^CBC w diff^L"
    obx = [
        ("6690-2^Leukocytes [#/volume] in Blood by Automated count^LN", f"{wbc:.1f}", "10*3/uL"),
        ("789-8^Erythrocytes [#/volume] in Blood by Automated count^LN", "4.62", "10*6/uL"),
        ("718-7^Hemoglobin [Mass/volume] in Blood^LN", f"{rng.uniform(11, 16):.1f}", "g/dL"),
        ("4544-3^Hematocrit [Volume Fraction] of Blood by Automated count^LN", "41.2", "%"),
        (
            "777-3^Platelets [#/volume] in Blood by Automated count^LN",
            str(rng.randrange(150, 400)),
            "10*3/uL",
        ),
        ("770-8^Neutrophils/100 leukocytes in Blood by Automated count^LN", f"{pct:.1f}", "%"),
        (
            "751-8^Neutrophils [#/volume] in Blood by Automated count^LN",
            _in_unit(anc, factor),
            unit,
        ),
        ("731-0^Lymphocytes [#/volume] in Blood by Automated count^LN", "1.90", "10*3/uL"),
    ]
    segments = [
        *_header(cid, drawn + timedelta(hours=1), patient, rng),
        f"ORC|RE|ORD{n}|ACC{n}||CM",
        f"OBR|1|ORD{n}|ACC{n}|{panel}|||{dt}|||||||{dt}||{PRESCRIBER}^Lee^Ann||||||{resulted}|||F",
    ]
    for k, (code, value, unit_) in enumerate(obx, 1):
        flagged = flag if code.startswith("751-8") else ""
        segments.append(f"OBX|{k}|NM|{code}||{value}|{unit_}^^UCUM||{flagged}|||F|||{dt}")
    return "\r".join(segments) + "\r"


def _anc_only(cid: str, n: int, patient: int, drawn: datetime, rng: random.Random) -> str:
    anc = _anc(rng)
    unit, factor = _unit(rng)
    dt = hl7_ts(drawn)
    segments = [
        *_header(cid, drawn + timedelta(hours=1), patient, rng),
        f"OBR|1|ORD{n}|ACC{n}|751-8^Absolute neutrophil count^LN|||{dt}",
        f"OBX|1|NM|751-8^Neutrophils [#/volume] in Blood by Automated count^LN||"
        f"{_in_unit(anc, factor)}|{unit}|1.5-7.8|{'L' if anc < 1500 else ''}|||F|||{dt}",
        "NTE|1||Clozapine monitoring \\T\\ ANC reported to REMS",
    ]
    return "\r".join(segments) + "\r"


def _outreach(cid: str, n: int, patient: int, drawn: datetime, rng: random.Random) -> str:
    """The outreach lab: v2.3, a local code for ANC, K/uL, times without offset."""
    anc = _anc(rng)
    sent = hl7_ts(drawn + timedelta(hours=2), offset=False)
    segments = [
        f"MSH|^~\\&|LABSYS|COUNTY|REMS|REMS|{sent}||ORU^R01|{cid}|P|2.3",
        f"PID|1||MRN{patient:06d}^^^GH&{MRN_SYSTEM}&ISO||{FAMILY[patient % len(FAMILY)]}^"
        f"{GIVEN[patient % len(GIVEN)]}",
        f"OBR|1||OR{n}|CBC^CBC|||{hl7_ts(drawn, offset=False)}",
        f"OBX|1|NM|ANC^Abs Neutrophils^L||{anc / 1000:.1f}|K/uL|||||F",
    ]
    return "\r".join(segments) + "\r"


def _bmp(cid: str, n: int, patient: int, drawn: datetime, rng: random.Random) -> str:
    """A basic metabolic panel: no clozapine-relevant result (acknowledged, kept 7 days)."""
    dt = hl7_ts(drawn)
    obx = [
        (
            "2951-2^Sodium [Moles/volume] in Serum or Plasma^LN",
            str(rng.randrange(134, 146)),
            "mmol/L",
        ),
        (
            "2823-3^Potassium [Moles/volume] in Serum or Plasma^LN",
            f"{rng.uniform(3.4, 5.2):.1f}",
            "mmol/L",
        ),
        ("2075-0^Chloride [Moles/volume] in Serum or Plasma^LN", "101", "mmol/L"),
        ("2028-9^Carbon dioxide, total [Moles/volume] in Serum or Plasma^LN", "25", "mmol/L"),
        ("3094-0^Urea nitrogen [Mass/volume] in Serum or Plasma^LN", "14", "mg/dL"),
        (
            "2160-0^Creatinine [Mass/volume] in Serum or Plasma^LN",
            f"{rng.uniform(0.6, 1.3):.2f}",
            "mg/dL",
        ),
        (
            "2345-7^Glucose [Mass/volume] in Serum or Plasma^LN",
            str(rng.randrange(70, 140)),
            "mg/dL",
        ),
    ]
    segments = [
        *_header(cid, drawn + timedelta(hours=1), patient, rng),
        f"ORC|RE|ORD{n}|ACC{n}||CM",
        f"OBR|1|ORD{n}|ACC{n}|51990-0^Basic metabolic panel - Blood^LN|||{dt}",
    ]
    for k, (code, value, unit) in enumerate(obx, 1):
        segments.append(f"OBX|{k}|NM|{code}||{value}|{unit}|||||F|||{dt}")
    return "\r".join(segments) + "\r"


KINDS: list[tuple[str, Callable[[str, int, int, datetime, random.Random], str], float]] = [
    ("CBC with ANC (v2.5.1, 8 OBX)", _cbc, 0.55),
    ("ANC only (v2.5.1)", _anc_only, 0.15),
    ("ANC, local code (v2.3)", _outreach, 0.10),
    ("no ANC: BMP with potassium", _bmp, 0.20),
]


def _order(
    cid: str, n: int, patient: int, now: datetime, rng: random.Random, placer: str = ""
) -> str:
    """RDE^O11 v2.5.1 as an outpatient pharmacy system sends a clozapine refill: the
    prescriber in ORC-12, RxNorm in RXE-2, days supply in TQ1-6, the pharmacy in RXE-40; the
    placer order number ``placer`` (default RX and ``n``) in ORC-2."""
    mrn = f"MRN{patient:06d}"
    sent = hl7_ts(now)
    days = rng.choice([7, 7, 7, 14, 28])
    tablets = days * rng.choice([1, 2, 3])
    return (
        "\r".join(
            [
                f"MSH|^~\\&|PHARMSYS|GENERAL HOSP|REMS|REMS|{sent}||RDE^O11^RDE_O11|{cid}|P|2.5.1",
                f"PID|1||{mrn}^^^GH&{MRN_SYSTEM}&ISO^MR||{FAMILY[patient % len(FAMILY)]}"
                f"^{GIVEN[patient % len(GIVEN)]}",
                "PV1|1|O|CLOZ^^^GH",
                f"ORC|NW|{placer or f'RX{n:08d}'}|||||||{sent}|||{PRESCRIBER}^Lee^Ann^^^^MD^^NPI"
                + "|" * 17
                + "O",
                f"RXE||197536^clozapine 100 MG Oral Tablet^RXNORM|100||mg^milligram^UCUM"
                f"|TAB^tablet^HL70292||||{tablets}|TAB^tablet^HL70292"
                + "|" * 29
                + f"{PHARMACY}^General Hospital Pharmacy^NPI",
                f"TQ1|1||QD^daily^HL70335|||{days}^d",
            ]
        )
        + "\r"
    )


def order_workload(count: int, now: datetime, seed: int = 2) -> Workload:
    """``count`` RDE^O11 dispense checks for the enrolled patients, about 0.5 % resends."""
    rng = random.Random(seed)
    work = Workload([], [])
    resend_at = set(rng.sample(range(count // 10 or 1, count), max(1, count // 200)))
    for i in range(count):
        if i in resend_at:
            original = rng.randrange(0, i)
            while original in work.duplicates:
                original = rng.randrange(0, i)
            work.duplicates[i] = original
            work.messages.append(work.messages[original])
            work.control_ids.append(work.control_ids[original])
            work.kinds["resend (same control id and bytes)"] += 1
            continue
        cid = f"RX{seed:02d}{i:07d}"
        order = _order(cid, i, rng.randrange(PATIENTS), now, rng, placer=cid)  # unique per seed
        work.messages.append(order.encode("ascii"))
        work.control_ids.append(cid)
        work.kinds["RDE^O11 clozapine refill (v2.5.1)"] += 1
    return work


def workload(count: int, now: datetime, seed: int = 1) -> Workload:
    """``count`` ORU^R01 messages in sending order, about 0.5 % of them resends of an earlier
    message (same control id, same bytes); draw times spread from enrollment to now."""
    rng = random.Random(seed)
    duplicates = max(1, count // 200)
    gap = max(1, min(500, count // 10))  # a resend comes well after its original
    resend_at = set(rng.sample(range(gap, count), duplicates))
    start = datetime.combine(enrolled_on(now.date()), datetime.min.time(), UTC) + timedelta(days=2)
    step = (now - timedelta(hours=3) - start) / count
    work = Workload([], [])
    weights = [w for _, _, w in KINDS]
    for i in range(count):
        if i in resend_at:
            original = rng.randrange(0, i - gap + 1)
            while original in work.duplicates:
                original = rng.randrange(0, i - gap + 1)
            work.duplicates[i] = original
            work.messages.append(work.messages[original])
            work.control_ids.append(work.control_ids[original])
            work.kinds["resend (same control id and bytes)"] += 1
            continue
        name, build, _ = rng.choices(KINDS, weights=weights)[0]
        cid = f"{'Q' if build is _outreach else 'GH'}{seed:02d}{i:07d}"
        drawn = start + step * i
        text = build(cid, i, rng.randrange(PATIENTS), drawn, rng)
        work.messages.append(text.encode("ascii"))
        work.control_ids.append(cid)
        work.kinds[name] += 1
    return work


# --- the client -------------------------------------------------------------------------------


class _Client(asyncio.Protocol):
    """One MLLP connection: one message out, its reply awaited, then the next."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[bytes] | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(END_BLOCK)
        if end == -1:
            return
        start = self.buffer.find(START_BLOCK, 0, end)
        reply = bytes(self.buffer[start + 1 : end])
        del self.buffer[: end + 2]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed before the reply"))


async def _connection(
    port: int, indexes: list[int], messages: list[bytes]
) -> tuple[list[float], list[tuple[int, bytes]]]:
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_connection(_Client, HOST, port)
    latencies, replies = [], []
    clock = time.perf_counter
    try:
        for i in indexes:
            waiter = client.waiter = loop.create_future()
            started = clock()
            transport.write(START_BLOCK + messages[i] + END_BLOCK)
            reply = await waiter
            latencies.append(clock() - started)
            replies.append((i, reply))
    finally:
        transport.close()
    return latencies, replies


@dataclass
class Run:
    rate: float  # messages per second
    p50_ms: float
    p99_ms: float
    cpu: float  # process CPU seconds per wall second (all threads)
    replies: dict[int, bytes]


async def drive(port: int, work: Workload, connections: int) -> Run:
    """Send the workload over ``connections`` connections (round robin shares), each waiting for
    every ACK before its next message."""
    shares = [list(range(k, len(work.messages), connections)) for k in range(connections)]
    cpu, started = time.process_time(), time.perf_counter()
    async with asyncio.timeout(900):
        done = await asyncio.gather(*(_connection(port, s, work.messages) for s in shares))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    latencies = sorted(x for lat, _ in done for x in lat)
    replies = {i: r for _, pairs in done for i, r in pairs}
    return Run(
        len(latencies) / elapsed,
        latencies[len(latencies) // 2] * 1000,
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        cpu / elapsed,
        replies,
    )


def order_outcomes(run: Run) -> Counter[str]:
    """The decisions the RRE^O12 answers carry (ORC-16.1), one per order."""
    found: Counter[str] = Counter()
    for reply in run.replies.values():
        for segment in reply.split(b"\r"):
            fields = segment.split(b"|")
            if fields[0] == b"ORC" and len(fields) > 16:
                found[fields[16].split(b"^")[0].decode()] += 1
    return found


def check_acks(work: Workload, run: Run) -> Counter[str]:
    """ACK codes by MSA-1; every MSA-2 must be the message's control id."""
    codes: Counter[str] = Counter()
    for i, reply in run.replies.items():
        msa = next((s for s in reply.split(b"\r") if s.startswith(b"MSA|")), b"").split(b"|")
        if len(msa) < 3 or msa[2].decode() != work.control_ids[i]:
            raise AssertionError(f"reply to message {i} does not acknowledge it")
        codes[msa[1].decode()] += 1
    return codes


# --- the servers ------------------------------------------------------------------------------


class Target:
    label = ""

    async def start(self) -> int:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


class TransportOnly(Target):
    """(a) The gateway's MLLP transport with a handler answering a fixed ACK."""

    label = "(a) transport only, fixed ACK"

    async def start(self) -> int:
        async def handler(_data: bytes, _peer: PeerInfo) -> bytes:
            return FIXED_ACK

        self.server = MllpServer(MllpSettings(host=HOST, port=0), handler)
        await self.server.start()
        return self.server.port

    async def stop(self) -> None:
        await self.server.stop()


class PythonHl7(Target):
    """(b) python-hl7's asyncio MLLP server: hl7.parse each message, answer create_ack()."""

    label = "(b) python-hl7: parse + create_ack"

    async def start(self) -> int:
        async def on_client(
            reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter
        ) -> None:
            try:
                while True:
                    message = await reader.readmessage()  # hl7.parse of the block
                    writer.writemessage(message.create_ack())
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await hl7.mllp.start_hl7_server(on_client, HOST, 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


class Gateway(Target):
    """(c) The gateway: Hl7Listener → Hl7Intake → RemsService → the single writer, on a fresh
    migrated database holding the registry; every message with its results and its ACK is
    committed before the ACK leaves."""

    def __init__(
        self, factory: DatabaseFactory, packs: PackLibrary, label: str, orders: bool = False
    ) -> None:
        self.factory, self.packs, self.label = factory, packs, label
        self.today = datetime.now(UTC).date()
        self.orders = orders  # dispense checks: every patient gets a recent ANC and PSF first

    async def start(self) -> int:
        self.url = self.factory.fresh_url()
        self.engine = make_engine(self.url)
        application = assemble(self.engine, UnitContext(self.packs))
        self.writer, self.service = application.writer, application.service
        await self.service.load_registry(registry(self.today), Source("bench"))
        if self.orders:
            await monitored(self.service)
        metrics = GatewayMetrics(self.writer)  # as `serve` does: ACK codes and latency
        self.listener = Hl7Listener(
            self.service, SENDERS, MllpSettings(host=HOST, port=0), on_ack=metrics.count_ack
        )
        await self.listener.start()
        self.units, self.commits = self.writer.units, self.writer.commits
        return self.listener.server.port

    async def stop(self) -> None:
        await self.listener.stop()
        self.batches = (self.writer.units - self.units, self.writer.commits - self.commits)
        self.stored = stored_messages(self.engine)
        self.writer.stop()
        self.engine.dispose()
        self.factory.drop(self.url)


async def monitored(service: RemsService) -> None:
    """For every patient a normal ANC drawn yesterday and this month's PSF with it, so that a
    refill can be authorized (the decisions still run every rule)."""
    drawn = datetime.now(UTC) - timedelta(days=1)
    for i in range(PATIENTS):
        mrn = [Identifier(f"urn:oid:{MRN_SYSTEM}", f"MRN{i:06d}")]
        result = LabResult("751-8", "2400", "/uL", drawn, ResultStatus.FINAL, f"bench|ANC{i}")
        await service.ingest_labs(mrn, [result], Source("bench"), drawn + timedelta(hours=2))
        form = PatientStatusForm(
            type=PsfType.MONTHLY,
            submitted_at=drawn + timedelta(hours=3),
            submitter=PRESCRIBER,
            role=SubmitterRole.PRESCRIBER,
            prescriber_npi=PRESCRIBER,
            anc=(ReportedAnc("2400", "/uL", drawn),),
            signed=True,
        )
        await service.submit_psf(mrn, form, Source("bench"))


def stored_messages(engine: Engine) -> Counter[str]:
    row = tables.Hl7MessageRow.__table__
    with engine.connect() as conn:
        found = conn.execute(select(row.c.disposition, func.count()).group_by(row.c.disposition))
        return Counter({d: n for d, n in found})


def durability(url: str) -> str:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                sync = conn.exec_driver_sql("SHOW synchronous_commit").scalar()
                fsync = conn.exec_driver_sql("SHOW fsync").scalar()
                return f"PostgreSQL synchronous_commit={sync}, fsync={fsync}"
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            folder = Path(engine.url.database or "").parent
            return (
                f"SQLite journal_mode={mode}, synchronous={'FULL' if sync == 2 else sync}"
                f" (file in {folder})"
            )
    finally:
        engine.dispose()


# --- measuring --------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    runs: list[Run] = field(default_factory=list)

    def median(self, key: Callable[[Run], float]) -> float:
        return statistics.median(key(r) for r in self.runs)

    @property
    def rate(self) -> float:
        return self.median(lambda r: r.rate)


async def measure(target: Target, work: Workload, connections: int, freeze: bool) -> Run:
    port = await target.start()
    if freeze:  # what exists now (modules, registry cache, the workload) is never scanned again
        gc.collect()
        gc.freeze()
    try:
        return await drive(port, work, connections)
    finally:
        if freeze:
            gc.unfreeze()
        await target.stop()


def print_table(connections: int, rows: list[Row]) -> None:
    a, b = rows[0].rate, rows[1].rate
    plural = "s" if connections > 1 else ""
    print(f"\n== {connections} connection{plural}")
    print(
        f"{'server':40} {'msg/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'cpu':>5}"
        f" {'vs (a)':>7} {'vs (b)':>7}  runs msg/s"
    )
    for row in rows:
        print(
            f"{row.label:40} {row.rate:7.0f} {row.median(lambda r: r.p50_ms):7.2f}"
            f" {row.median(lambda r: r.p99_ms):7.2f} {row.median(lambda r: r.cpu):5.2f}"
            f" {row.rate / a:7.2f} {row.rate / b:7.2f}  "
            + " ".join(f"{r.rate:.0f}" for r in row.runs)
        )


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def print_targets(results: dict[int, list[Row]], gateway: int) -> None:
    """The issue's targets, for the SQLite gateway row: met or not (never a failure)."""
    print("\ntargets (issue 4, SQLite synchronous=FULL):")
    if 8 in results:
        row = results[8][gateway]
        rate, p99 = row.rate, row.median(lambda r: r.p99_ms)
        ok_rate, ok_p99 = rate >= TARGET_8_RATE, p99 <= TARGET_8_P99_MS
        print(f"  8 connections >= {TARGET_8_RATE:.0f} msg/s: {rate:.0f}  {verdict(ok_rate)}")
        print(f"  8 connections p99 ACK <= {TARGET_8_P99_MS:.0f} ms: {p99:.1f}  {verdict(ok_p99)}")
    if 1 in results:
        rate = results[1][gateway].rate
        ok = rate >= TARGET_1_RATE
        print(f"  1 connection >= {TARGET_1_RATE:.0f} msg/s: {rate:.0f}  {verdict(ok)}")
    for connections, rows in sorted(results.items()):
        ours, peer = rows[gateway].rate, rows[1].rate
        print(
            f"  faster than (b) over {connections}, storing durably:"
            f" {ours:.0f} vs {peer:.0f} msg/s ({ours / peer:.2f}x)  {verdict(ours > peer)}"
        )


def print_order_targets(results: dict[int, list[Row]], gateway: int) -> None:
    print("\ntargets (issue 14, RDE^O11 -> RRE^O12, SQLite synchronous=FULL):")
    if 8 in results:
        row = results[8][gateway]
        rate, p99 = row.rate, row.median(lambda r: r.p99_ms)
        wanted, limit = ORDER_TARGET_8_RATE, ORDER_TARGET_8_P99_MS
        print(f"  8 connections >= {wanted:.0f} decisions/s: {rate:.0f}  {verdict(rate >= wanted)}")
        print(f"  8 connections p99 <= {limit:.0f} ms: {p99:.1f}  {verdict(p99 <= limit)}")


async def profile_gateway(
    factory: DatabaseFactory,
    packs: PackLibrary,
    work: Workload,
    connections: int,
    top: int,
    orders: bool,
) -> None:
    """cProfile of the event-loop thread and of the writer thread over one gateway run."""
    target = Gateway(factory, packs, "(c) gateway", orders)
    port = await target.start()
    loop_profile, writer_profile = cProfile.Profile(), cProfile.Profile()
    target.writer.call(lambda _store: writer_profile.enable())  # profiles the writer's thread
    loop_profile.enable()
    try:
        run = await drive(port, work, connections)
    finally:
        loop_profile.disable()
        target.writer.call(lambda _store: writer_profile.disable())
        await target.stop()
    print(
        f"\n== profile: gateway, {len(work.messages)} messages over {connections} connections"
        f" ({run.rate:.0f} msg/s under the profiler)"
    )
    for name, profile in (("event-loop thread", loop_profile), ("writer thread", writer_profile)):
        for order in ("tottime", "cumulative"):
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats(order).print_stats(top)
            lines = out.getvalue().splitlines()
            start = next(i for i, line in enumerate(lines) if "ncalls" in line)
            print(f"\n-- {name}, by {order}")
            print("\n".join(line for line in lines[start:] if line.strip()))


async def bench(args: argparse.Namespace) -> None:
    packs = PackLibrary()
    now = datetime.now(UTC)
    work = order_workload(args.messages, now) if args.orders else workload(args.messages, now)
    sqlite = DatabaseFactory()
    postgres = DatabaseFactory(args.postgres_url) if args.postgres_url else None
    try:
        if args.profile:
            connections = args.connections[-1]
            await profile_gateway(sqlite, packs, work, connections, args.profile, args.orders)
            return
        gateways: list[tuple[str, DatabaseFactory]] = [("(c) gateway, SQLite durable", sqlite)]
        if postgres is not None:
            gateways.append(("(c) gateway, PostgreSQL durable", postgres))
        results = {
            n: [Row(TransportOnly.label), Row(PythonHl7.label), *(Row(g) for g, _ in gateways)]
            for n in args.connections
        }
        codes: dict[str, Counter[str]] = {}
        decided: dict[str, Counter[str]] = {}
        stored: dict[str, Counter[str]] = {}
        writer_batches: dict[tuple[str, int], list[float]] = {}
        started = time.perf_counter()
        for run in range(args.runs):
            for n in args.connections:
                targets: list[Target] = [TransportOnly(), PythonHl7()]
                targets += [Gateway(f, packs, label, args.orders) for label, f in gateways]
                for row, target in zip(results[n], targets, strict=True):
                    measured = await measure(target, work, n, args.gc_freeze)
                    if not isinstance(target, TransportOnly):
                        codes[row.label] = check_acks(work, measured)
                    if isinstance(target, Gateway):
                        check_resends(work, measured)
                        if args.orders:
                            decided[row.label] = order_outcomes(measured)
                        stored[row.label] = target.stored
                        units, commits = target.batches
                        writer_batches.setdefault((row.label, n), []).append(units / commits)
                    measured.replies = {}
                    row.runs.append(measured)
            if not args.quiet:
                print(f"  run {run + 1}/{args.runs} done at {time.perf_counter() - started:.0f}s")
        print_summary(args, work, sqlite, postgres)
        for n in args.connections:
            print_table(n, results[n])
        print("\nACK codes and what the gateway stored (last run):")
        for label, counted in codes.items():
            print(f"  {label}: ACKs {dict(counted)}")
        for label, counted in decided.items():
            print(f"  {label}: decisions (ORC-16) {dict(counted)}")
        for label, counted in stored.items():
            print(f"  {label}: stored {sum(counted.values())} messages {dict(counted)}")
        for (label, n), sizes in writer_batches.items():
            print(
                f"  {label}, {n} connection(s): {statistics.median(sizes):.2f} messages per commit"
            )
        if args.orders:
            print_order_targets(results, gateway=2)
        else:
            print_targets(results, gateway=2)
        print(f"\ntotal {time.perf_counter() - started:.0f}s")
    finally:
        sqlite.close()
        if postgres is not None:
            postgres.close()


def check_resends(work: Workload, run: Run) -> None:
    """A resend gets the very ACK its original got (stored, not processed again)."""
    for resend, original in work.duplicates.items():
        if run.replies[resend] != run.replies[original]:
            raise AssertionError(f"the resend at {resend} got another ACK than its original")


def print_summary(
    args: argparse.Namespace,
    work: Workload,
    sqlite: DatabaseFactory,
    postgres: DatabaseFactory | None,
) -> None:
    size = sum(len(m) for m in work.messages) / len(work.messages)
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(
        f"\n{len(work.messages)} {'RDE^O11' if args.orders else 'ORU^R01'} messages"
        f" ({work.unique} unique control ids,"
        f" {size:.0f} bytes on average), {PATIENTS} enrolled patients; medians of {args.runs}"
        f" runs; Python {sys.version.split()[0]}, {loop} event loop, {os.cpu_count()} cores"
    )
    for kind, count in work.kinds.items():
        print(f"  {count:6d}  {kind}")
    print("server and clients in one process and one event loop, loopback TCP;")
    print("each connection sends its share one message at a time, waiting for each ACK;")
    print("cpu = process CPU seconds per wall second (all threads)")
    frozen = "gc.freeze() after each server's setup" if args.gc_freeze else "default, not frozen"
    print(f"garbage collector: {frozen}")
    url = sqlite.fresh_url()
    print(f"durability (SQLite): {durability(url)}")
    sqlite.drop(url)
    if postgres is not None:
        url = postgres.fresh_url()
        print(f"durability (PostgreSQL): {durability(url)}")
        postgres.drop(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 600 messages, 1 run")
    parser.add_argument(
        "--connections", type=int, nargs="+", default=[1, 8], help="connection counts to measure"
    )
    parser.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        help="the event loop (default: the one `serve` runs on under uvicorn, uvloop when"
        " installed)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        metavar="TOP",
        default=0,
        help="instead of the table: cProfile one gateway run (over the last --connections"
        " count) and print the TOP functions of the event-loop and the writer threads",
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() after each server's setup: no full collection rescans the modules"
        " (the gateway does not do this by itself)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument(
        "--orders",
        action="store_true",
        help="RDE^O11 dispense checks answered RRE^O12 instead of ORU^R01 lab results",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("REMS_BENCH_POSTGRES_URL")
        or os.environ.get("REMS_TEST_POSTGRES_URL"),
        help="a PostgreSQL server's maintenance database; a fresh database is made there per run",
    )
    args = parser.parse_args()
    if args.quick:
        args.messages, args.runs = min(args.messages, 600), 1
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(bench(args))
    else:
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
