"""ADT (v2.3–v2.8) → what the identity of registry patients needs (docs/contracts.md §4).

Only identifiers are read: the PID's candidates and, for a merge, the MRG's prior ones.
Demographics are never taken from an ADT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mappings.hl7v2.oru import cx_candidates, patient_candidates
from mappings.hl7v2.senders import SenderConfig
from mappings.hl7v2.tokenizer import Message, Segment
from rems_core.identity import Candidate

#: Admit, register, update, add person, update person: new PID-3 identifiers are added.
IDENTIFYING_EVENTS = frozenset({"A01", "A04", "A08", "A28", "A31"})
#: Merge patient identifier lists (A40), merge patient id (A34, older), change identifier (A47).
MERGE_EVENTS = frozenset({"A40", "A34", "A47"})

AdtKind = Literal["identify", "merge", "other"]


@dataclass(frozen=True)
class AdtPatient:
    candidates: list[Candidate]  # the PID's
    prior: list[Candidate]  # the MRG's, the identifiers merged into this patient


@dataclass(frozen=True)
class AdtEvent:
    event: str  # the trigger event, e.g. "A40"
    kind: AdtKind
    patients: list[AdtPatient]  # one per PID, in order (an A40 may merge several)


def to_adt_event(message: Message, sender: SenderConfig) -> AdtEvent:
    """The event (MSH-9.2, else EVN-1) and each PID's patient with its MRG's prior identifiers."""
    event = adt_event_code(message)
    patients: list[AdtPatient] = []
    for segment in message.segments:
        if segment.name == "PID":
            patients.append(AdtPatient(patient_candidates(segment, sender), []))
        elif segment.name == "MRG" and patients:
            patient = patients[-1]
            prior = [*patient.prior, *prior_candidates(segment, sender)]
            patients[-1] = AdtPatient(patient.candidates, prior)
    return AdtEvent(event, _kind(event), patients)


def adt_event_code(message: Message) -> str:
    """MSH-9.2, else EVN-1 (senders of v2.3 that write MSH-9 as `ADT` alone)."""
    evn = message.first("EVN")
    event = message.msh.get(9, 2) or (evn.get(1) if evn else "")
    return event.strip().upper()


def prior_candidates(mrg: Segment, sender: SenderConfig) -> list[Candidate]:
    """MRG-1 repetitions, then MRG-4 (the prior patient id of older senders)."""
    return [
        *cx_candidates(mrg.field(1), "MRG-1", sender, numbered=True),
        *cx_candidates(mrg.field(4), "MRG-4", sender),
    ]


def _kind(event: str) -> AdtKind:
    if event in IDENTIFYING_EVENTS:
        return "identify"
    if event in MERGE_EVENTS:
        return "merge"
    return "other"
