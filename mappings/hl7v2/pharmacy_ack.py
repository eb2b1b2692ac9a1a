"""Answers to pharmacy orders (docs/contracts.md §4 "Pharmacy orders"): RRE^O12 (RRE^O02 in
v2.3/2.3.1) to an RDE, ORP^O10 to an OMP, RRD^O14 to an RDS^O13.

MSA, then every reason an ERR of severity E and every warning one of severity W, the same texts as
message-level NTE, then one ORC per order: ORC-1 OK/UA, ORC-2 the placer number, ORC-3 the RDA,
ORC-16 the outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from mappings.hl7v2.ack import answer_header, coded_text, err_segment, escape, version_at_least_2_5
from mappings.hl7v2.oru import Hl7Problem
from mappings.hl7v2.tokenizer import Segment
from rems_core.model import Decision, Outcome
from rems_core.rda import OrderAction

#: The answer's MSH-9 for each order event.
ANSWER_TYPE = {
    ("RDE", "O11"): ("RRE", "O12"),
    ("RDE", "O01"): ("RRE", "O02"),
    ("OMP", "O09"): ("ORP", "O10"),
    ("RDS", "O13"): ("RRD", "O14"),
}
OUTCOME_SYSTEM = "urn:rems-gateway:outcome"
OUTCOME_TEXT = {
    Outcome.AUTHORIZED: "Authorized",
    Outcome.RATIONALE_REQUIRED: "Rationale required",
    Outcome.DENIED: "Denied",
    Outcome.NOT_APPLICABLE: "Not applicable",
}
#: ORC-1 (HL7 table 0119): OK order accepted, UA unable to accept.
ACCEPTED = {Outcome.AUTHORIZED, Outcome.NOT_APPLICABLE}
#: An order's end, answered: done as asked (CR/DR), or unable to (UC/UD) for an unknown order.
ENDED = {OrderAction.CANCEL: ("CR", "UC"), OrderAction.DISCONTINUE: ("DR", "UD")}
ORDER_NOT_FOUND = "ORDER_NOT_FOUND"


@dataclass(frozen=True)
class OrderAnswer:
    """One order's part of the answer: its decision (None: no decision was made, e.g. its
    placer number was used for another order) and its own findings beyond the decision's."""

    sequence: int  # of its ORC
    placer: str
    decision: Decision | None
    problems: Sequence[Hl7Problem] = ()
    control: str = ""  # ORC-1 when no decision says it: an order's end, a dispense record
    rda: str | None = None  # ORC-3 when no decision names it (an RDS names its RDA)


def ended(sequence: int, placer: str, action: OrderAction, known: bool) -> OrderAnswer:
    """ORC-1 CA/DC answered: CR/DR for an order the gateway decided (its RDA, if any, voided),
    UC/UD with ORDER_NOT_FOUND for one it never decided."""
    done, unable = ENDED[action]
    if known:
        return OrderAnswer(sequence, placer, None, control=done)
    text = "the gateway decided no order with this placer number"
    problem = Hl7Problem(f"ORC^{sequence}^2", "204", "E", ORDER_NOT_FOUND, text)
    return OrderAnswer(sequence, placer, None, (problem,), control=unable)


def dispensed(
    placer: str, rda: str | None, recorded: bool, findings: Sequence[Hl7Problem]
) -> OrderAnswer:
    """An RDS^O13 answered: ORC-1 OK when the dispense was recorded (or ignored: not clozapine),
    UA when it was refused (RDA_ALREADY_DISPENSED, RDA_EXPIRED, RDA_VOIDED, …)."""
    return OrderAnswer(1, placer, None, findings, control="OK" if recorded else "UA", rda=rda)


def answer_type(msh: Segment) -> str:
    kind, event = ANSWER_TYPE.get((msh.get(9, 1), msh.get(9, 2)), ("RRE", "O12"))
    if msh.get(12, 1) == "2.3":  # MSH-9.3, the message structure, arrived in v2.3.1
        return f"{kind}^{event}"
    return f"{kind}^{event}^{kind}_{event}"


def order_problems(answer: OrderAnswer) -> list[Hl7Problem]:
    """The order's findings, then its decision's reasons (E) and warnings (W)."""
    where = f"ORC^{answer.sequence}"
    problems = list(answer.problems)
    if answer.decision is not None:
        problems += [Hl7Problem(where, "0", "E", r.code, r.text) for r in answer.decision.reasons]
        problems += [Hl7Problem(where, "0", "W", w.code, w.text) for w in answer.decision.warnings]
    return problems


def build_order_answer(
    msh: Segment,
    code: str,
    answers: Sequence[OrderAnswer],
    problems: Sequence[Hl7Problem],
    control_id: str,
    now: datetime,
    msa_code: Callable[[str], str] | None = None,
) -> str:
    """The RRE/ORP text (segments separated by \\r). ``code`` is ours (AA, AE); ``msa_code``
    maps it for a sender's engine in original mode, as for an ACK."""
    modern = version_at_least_2_5(msh.get(12, 1))
    findings = [*problems, *(p for a in answers for p in order_problems(a))]
    msa = ["MSA", msa_code(code) if msa_code is not None else code, escape(msh.get(10, 1))]
    if not modern and findings:
        msa.append(escape(coded_text(findings[0])))
    segments = [answer_header(msh, answer_type(msh), control_id, now), "|".join(msa)]
    segments += [err_segment(problem, modern) for problem in findings]
    segments += [
        f"NTE|{n}|L|{escape(coded_text(problem))}" for n, problem in enumerate(findings, start=1)
    ]
    segments += [_orc(answer) for answer in answers]
    return "\r".join(segments) + "\r"


def _orc(answer: OrderAnswer) -> str:
    decision = answer.decision
    fields = ["ORC", answer.control or "UA", escape(answer.placer)] + [""] * 14
    if answer.rda:
        fields[3] = f"{escape(answer.rda)}^REMS"
    if decision is not None:
        fields[1] = "OK" if decision.outcome in ACCEPTED else "UA"
        if decision.rda is not None:
            fields[3] = f"{escape(decision.rda.number)}^REMS"
        outcome = decision.outcome
        fields[16] = f"{outcome.value}^{OUTCOME_TEXT[outcome]}^{OUTCOME_SYSTEM}"
    return "|".join(fields).rstrip("|")
