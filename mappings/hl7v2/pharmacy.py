"""Pharmacy orders (docs/contracts.md §4 "Pharmacy orders"): RDE^O11 (RDE^O01 in v2.3/2.3.1) and
OMP^O09 → one dispense check per ORC; ORC-1 CA/DC → an order's end; RDS^O13 → a dispense record.

Pure: the message and the sender's settings in, domain values out. The pharmacist override
(docs/rules.md §6.2) travels in the order's group: an OBX coded ``REMS-OVERRIDE^…^99REMS`` whose
OBX-5 is the rationale and OBX-16 the prescriber (by NPI) who agreed, beside an OBX with the ANC
the pharmacist holds (OBX-3 an ANC code, OBX-5/6 value and unit, OBX-14 its draw time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, tzinfo

from mappings.hl7v2.oru import Hl7Problem, hl7_time, observation_code, patient_candidates
from mappings.hl7v2.senders import SenderConfig
from mappings.hl7v2.tokenizer import Message, Segment
from rems_core.identity import Candidate
from rems_core.model import DispenseRequest, Override, ReportedAnc, Setting, decimal_or_none
from rems_core.rda import DispenseRecord, OrderAction, OrderEnd

#: CE-3/CE-6 naming RxNorm: HL7 table 0396's RXNORM, FHIR's URI, RxNorm's OID.
RXNORM_SYSTEMS = {"RXNORM", "http://www.nlm.nih.gov/research/umls/rxnorm", "2.16.840.1.113883.6.88"}
#: XCN-9 (or XCN-13) naming the NPI: the namespace, or its OID.
NPI_AUTHORITIES = {"NPI", "2.16.840.1.113883.4.6", "http://hl7.org/fhir/sid/us-npi"}
OVERRIDE_CODE = "REMS-OVERRIDE"
ENDING = {"CA": OrderAction.CANCEL, "DC": OrderAction.DISCONTINUE}
#: ORC-29 order type (table 0482) and PV1-2 patient class (table 0004), words included.
INPATIENT = {"I", "IP", "INPATIENT", "IN"}
OUTPATIENT = {"O", "OP", "OUTPATIENT", "OUT", "E", "EMERGENCY", "R", "P", "PREADMIT"}
#: TQ1-6 units (CQ-2) → days.
DURATION_DAYS = {"D": 1, "DAY": 1, "DAYS": 1, "WK": 7, "W": 7, "WEEK": 7, "WEEKS": 7}

PRESCRIBER_FROM_REGISTRY = "PRESCRIBER_FROM_REGISTRY"


@dataclass(frozen=True)
class PharmacyOrder:
    """One order of the message: its dispense check, and where it stood."""

    sequence: int  # of its ORC in the message, from 1
    placer: str  # ORC-2.1, echoed in the answer
    request: DispenseRequest  # prescriber_npi "" when the registry's enrolling prescriber is due
    problems: list[Hl7Problem] = field(default_factory=list)  # warnings of this order

    @property
    def prescriber_from_registry(self) -> bool:
        return not self.request.prescriber_npi


@dataclass(frozen=True)
class PharmacyMessage:
    candidates: list[Candidate]
    orders: list[PharmacyOrder]
    ends: list[PharmacyEnd]  # ORC-1 CA/DC orders


@dataclass(frozen=True)
class PharmacyEnd:
    """An order the message cancels or discontinues, and where it stood."""

    sequence: int  # of its ORC in the message, from 1
    placer: str  # ORC-2.1, echoed in the answer
    end: OrderEnd


class OrderRejected(ValueError):
    """The order cannot be checked: answered AE with this problem."""

    def __init__(self, problem: Hl7Problem) -> None:
        super().__init__(problem.text)
        self.problem = problem


def order_groups(message: Message) -> list[list[Segment]]:
    """Each ORC with the segments after it, up to the next ORC."""
    groups: list[list[Segment]] = []
    for segment in message.segments:
        if segment.name == "ORC":
            groups.append([segment])
        elif groups:
            groups[-1].append(segment)
    return groups


def to_pharmacy_message(
    message: Message, sender: SenderConfig, received: datetime, tz: tzinfo
) -> PharmacyMessage:
    """The dispense checks of an RDE or OMP; raises OrderRejected for an order without a placer
    number or a days supply."""
    pid = message.first("PID")
    pv1 = message.first("PV1")
    groups = order_groups(message)
    placers = [group[0].get(2, 1) for group in groups]
    orders, ends = [], []
    for sequence, group in enumerate(groups, start=1):
        placer = placers[sequence - 1]
        if not placer:
            raise OrderRejected(
                Hl7Problem(f"ORC^{sequence}^2", "101", "E", "", "no placer order number (ORC-2)")
            )
        request_id = f"{placer}#{sequence}" if placers.count(placer) > 1 else placer
        action = ENDING.get(group[0].get(1, 1).upper())
        at = hl7_time(group[0].get(9, 1), tz) or received
        if action is not None:
            ends.append(PharmacyEnd(sequence, placer, OrderEnd(request_id, action, at)))
            continue
        orders.append(_order(group, sequence, placer, request_id, pv1, sender, received, tz))
    candidates = patient_candidates(pid, sender) if pid is not None else []
    return PharmacyMessage(candidates, orders, ends)


def _order(
    group: list[Segment],
    sequence: int,
    placer: str,
    request_id: str,
    pv1: Segment | None,
    sender: SenderConfig,
    received: datetime,
    tz: tzinfo,
) -> PharmacyOrder:
    orc = group[0]
    problems: list[Hl7Problem] = []
    drug = _drug(group, sender)
    if drug is None:
        text = "no RxNorm code, and no code of the sender's drug_codes, in RXE-2 or RXO-1"
        problems.append(Hl7Problem(f"ORC^{sequence}", "103", "W", "DRUG_UNREADABLE", text))
    days, days_problem = _days_supply(group, sequence, sender)
    if days_problem is not None:
        problems.append(days_problem)
    ordered = hl7_time(orc.get(9, 1), tz) or received
    request = DispenseRequest(
        pharmacy_npi=_pharmacy(group, sender),
        prescriber_npi=_prescriber(orc, pv1),
        setting=_setting(orc, pv1),
        dispense_date=received,
        days_supply=days,
        drug=drug or "",
        discharge=_discharge(pv1, sender, ordered, tz),
        request_id=request_id,
        override=_override(group, sender, tz),
    )
    return PharmacyOrder(sequence, placer, request, problems)


def npi_of(segment: Segment, n: int) -> str:
    """The first XCN repetition of field n whose assigning authority (XCN-9) or identifier type
    (XCN-13) is the NPI's."""
    for repetition in range(segment.repetitions(n)):
        parts = segment.components(n, repetition)
        value = parts[0] if parts else ""
        authority = {
            segment.get(n, 9, 1, repetition),
            segment.get(n, 9, 2, repetition),
            segment.get(n, 13, 1, repetition),
        }
        if value and authority & NPI_AUTHORITIES:
            return value
    return ""


def _prescriber(orc: Segment, pv1: Segment | None) -> str:
    """ORC-12, else PV1-7 (attending), else PV1-8 (referring): "" when none names an NPI."""
    found = npi_of(orc, 12)
    if not found and pv1 is not None:
        found = npi_of(pv1, 7) or npi_of(pv1, 8)
    return found


def coded_drug(segment: Segment, n: int, sender: SenderConfig) -> str | None:
    """A CE/CWE field's RxNorm code (either triplet), else a code of the sender's drug_codes."""
    for code, system in ((1, 3), (4, 6)):
        value = segment.get(n, code)
        if value and segment.get(n, system) in RXNORM_SYSTEMS:
            return value
    for code in (1, 4):
        mapped = sender.drug_codes.get(segment.get(n, code))
        if mapped:
            return mapped
    return None


def _drug(group: list[Segment], sender: SenderConfig) -> str | None:
    """RXE-2 (give code), else RXO-1 (requested give code, OMP's only one)."""
    for name, n in (("RXE", 2), ("RXO", 1)):
        for segment in (s for s in group if s.name == name):
            drug = coded_drug(segment, n, sender)
            if drug is not None:
                return drug
    return None


def _group_days(group: list[Segment], name: str, number: int) -> list[int]:
    return [
        days
        for s in group
        if s.name == name and (days := _days(s.get(number, 1), s.get(number, 2)))
    ]


def _days(text: str, unit: str) -> int | None:
    value = decimal_or_none(text)
    factor = DURATION_DAYS.get(unit.upper() or "D")
    if value is None or factor is None or value <= 0:
        return None
    return int(value * factor)


def _days_supply(
    group: list[Segment], sequence: int, sender: SenderConfig
) -> tuple[int, Hl7Problem | None]:
    """TQ1-6 (service duration), or the field the sender names; two TQ1 that disagree: the
    longer, with a warning (the shorter would check less than may be dispensed)."""
    name, _, number = (sender.days_supply_field or "TQ1-6").partition("-")
    where = f"{name}^1^{number}"
    found = _group_days(group, name, int(number))
    if not found:
        text = f"no days supply ({name}-{number})"
        raise OrderRejected(Hl7Problem(where, "101", "E", "DAYS_SUPPLY_MISSING", text))
    if len(set(found)) > 1:
        text = f"{name}-{number} disagree ({', '.join(map(str, found))} days): the longer taken"
        problem = Hl7Problem(f"ORC^{sequence}", "0", "W", "DAYS_SUPPLY_INCONSISTENT", text)
        return max(found), problem
    return found[0], None


def _pharmacy(group: list[Segment], sender: SenderConfig) -> str:
    """RXE-40 (dispense-to pharmacy) by its NPI, else the sender's pharmacy_npi."""
    rxe = next((s for s in group if s.name == "RXE"), None)
    npi = rxe.get(40, 1) if rxe is not None else ""
    if npi.isdecimal() and len(npi) == 10:
        return npi
    return sender.pharmacy_npi or ""


def _setting(orc: Segment, pv1: Segment | None) -> Setting:
    """ORC-29 order type, else PV1-2 patient class; neither: outpatient."""
    for value in (orc.get(29, 1), pv1.get(2, 1) if pv1 is not None else ""):
        word = value.strip().upper()
        if word in INPATIENT:
            return Setting.INPATIENT
        if word in OUTPATIENT:
            return Setting.OUTPATIENT
    return Setting.OUTPATIENT


def _discharge(pv1: Segment | None, sender: SenderConfig, ordered: datetime, tz: tzinfo) -> bool:
    """The sender's ``discharge``, or an inpatient visit discharged (PV1-45) on the order's date
    or later. PV1-36 (discharge disposition) alone is no discharge: it is often set at admission."""
    if sender.discharge:
        return True
    if pv1 is None or pv1.get(2, 1).strip().upper() not in INPATIENT:
        return False
    discharged = hl7_time(pv1.get(45, 1), tz)
    return (
        discharged is not None and discharged.astimezone(tz).date() >= ordered.astimezone(tz).date()
    )


def _override(group: list[Segment], sender: SenderConfig, tz: tzinfo) -> Override | None:
    """The REMS-OVERRIDE OBX (rationale, agreeing prescriber) and the ANC OBX beside it."""
    observations = [s for s in group if s.name == "OBX"]
    marker = next((s for s in observations if s.get(3, 1) == OVERRIDE_CODE), None)
    if marker is None:
        return None
    anc = next(
        (
            _reported(obx, code, tz)
            for obx in observations
            if obx is not marker and (code := observation_code(obx, sender))
        ),
        None,
    )
    return Override(
        prescriber_npi=npi_of(marker, 16) or None,
        anc=anc,
        rationale=marker.get(5, 1).strip() or None,
    )


def _reported(obx: Segment, code: str, tz: tzinfo) -> ReportedAnc | None:
    drawn = hl7_time(obx.get(14, 1), tz)
    if drawn is None:
        return None
    unit = obx.get(6, 1) or obx.get(6, 2)
    return ReportedAnc(value=obx.get(5, 1), unit=unit, drawn=drawn, code=code)


def to_dispense_record(
    message: Message,
    sender: SenderConfig,
    received: datetime,
    tz: tzinfo,
) -> DispenseRecord:
    """RDS^O13: ORC-3.1 the RDA it names, ORC-2.1 the order, RXD-2 the drug (read as an order's),
    RXD-4 the amount, RXD-3 when, the days supply
    (TQ1-6 or the sender's field), the pharmacy as for an order."""
    groups = order_groups(message)
    group = groups[0] if groups else []
    rxd = next((s for s in group if s.name == "RXD"), None)
    if rxd is None:
        raise OrderRejected(Hl7Problem("RXD", "100", "E", "", "an RDS^O13 needs ORC and RXD"))
    orc = group[0]
    drug = coded_drug(rxd, 2, sender)
    name, _, number = (sender.days_supply_field or "TQ1-6").partition("-")
    days = _group_days(group, name, int(number))
    return DispenseRecord(
        rda=orc.get(3, 1) or None,
        request_id=orc.get(2, 1) or None,
        drug=drug or rxd.get(2, 1),
        quantity=decimal_or_none(rxd.get(4, 1)),
        days_supply=max(days) if days else None,
        dispensed_at=hl7_time(rxd.get(3, 1), tz) or received,
        pharmacy_npi=sender.pharmacy_npi,
    )
