"""The engine's answers as CDS Hooks cards (docs/contracts.md §6): one card per clozapine order
(order-select, order-sign, encounter-discharge), one monitoring card for patient-view.

A card is read in one glance: the indicator is `$rems-etasu`'s status (info: would be
authorized, warning: rationale required or a participant unknown, critical: denied); the summary
names the ANC with its date and category, or what is missing; the detail lists every reason
and the next step; a prescriber's rationale can resolve a warning, so the override reasons are
the PSF's rationale reasons (rules §5.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, tzinfo
from typing import Any

from mappings.cds.request import HookOrder
from mappings.fhir.etasu import REQUIREMENTS, EtasuCheck, etasu_status
from rems_core import monitoring
from rems_core.codes import Code
from rems_core.model import AncCategory, AncResult, Finding
from rems_core.status import RemsStatus

SUMMARY_LIMIT = 140
OVERRIDE_SYSTEM = "urn:rems-gateway:cds-override-reason"
TOPIC_SYSTEM = "urn:rems-gateway:cds-topic"
LOINC = "http://loinc.org"
CBC_WITH_DIFFERENTIAL = ("57021-8", "CBC W Auto Differential panel - Blood")
INDICATOR = {"success": "info", "data-required": "warning", "failure": "critical"}
VERDICT = {
    "info": "would be authorized",
    "warning": "rationale required",
    "critical": "denied",
}
CATEGORY = {
    AncCategory.NORMAL: "normal",
    AncCategory.MILD: "mild neutropenia",
    AncCategory.MODERATE: "moderate neutropenia",
    AncCategory.SEVERE: "severe neutropenia",
    AncCategory.BEN_NEUTROPENIA: "BEN range",
}
SHORT = {
    Code.PATIENT_NOT_ENROLLED: "not enrolled",
    Code.PRESCRIBER_NOT_CERTIFIED: "prescriber not certified",
    Code.PHARMACY_NOT_CERTIFIED: "pharmacy not certified",
    Code.TREATMENT_INTERRUPTED: "treatment interrupted",
    Code.TREATMENT_DISCONTINUED: "treatment discontinued",
    Code.PSF_OUT_OF_WINDOW: "PSF out of window",
    Code.OVERRIDE_LIMIT_REACHED: "override limit reached",
    Code.OVERRIDE_INCOMPLETE: "override incomplete",
    Code.ANC_BELOW_THRESHOLD: "ANC below threshold",
    Code.LABS_MISSED: "labs missed",
    Code.DISCHARGE_SUPPLY_EXCEEDS_LIMIT: "over the discharge day cap",
}
#: The override reasons a prescriber may give (CDS Hooks 3.0's risk-benefit-ratio, and the PSF's
#: rationale reasons), with the rationale reason each becomes on the PSF draft.
OVERRIDE_REASONS: dict[str, tuple[str, str]] = {
    "risk-benefit-ratio": ("benefit_outweighs_risk", "Benefit of clozapine outweighs the risk"),
    "benefit_outweighs_risk": ("benefit_outweighs_risk", "Benefit outweighs the neutropenia risk"),
    "mild_symptoms_only": ("mild_symptoms_only", "Mild symptoms only"),
    "history_of_moderate_neutropenia": (
        "history_of_moderate_neutropenia",
        "History of moderate neutropenia, known to the prescriber",
    ),
    "only_remaining_option": ("only_remaining_option", "Clozapine is the only remaining option"),
    "labs_unavailable": ("labs_unavailable", "Labs unavailable (the draw is arranged)"),
    "other": ("other", "Other (say why in the comment)"),
}


@dataclass(frozen=True)
class CardSource:
    label: str  # e.g. "Clozapine REMS gateway"
    rule_pack: str
    rule_pack_version: str
    url: str | None = None  # the gateway's public base URL, when configured

    def as_json(self) -> dict[str, Any]:
        source: dict[str, Any] = {
            "label": f"{self.label} · rule pack {self.rule_pack} v{self.rule_pack_version}",
            "topic": {
                "system": TOPIC_SYSTEM,
                "code": f"{self.rule_pack}|{self.rule_pack_version}",
                "display": f"Rule pack {self.rule_pack}, version {self.rule_pack_version}",
            },
        }
        if self.url:
            source["url"] = self.url
        return source


@dataclass(frozen=True)
class OrderCard:
    """A card and what the gateway keeps of it (feedback refers to it by uuid)."""

    card: dict[str, Any]
    indicator: str
    reasons: tuple[str, ...]


def indicator_of(check: EtasuCheck, missing: tuple[str, ...]) -> str:
    """The card's indicator is `$rems-etasu`'s status; the pharmacy an order hook does not name
    is left to the dispense (the pharmacy's own check)."""
    unasked = frozenset({"pharmacy-certified"}) if "pharmacy" in missing else frozenset()
    return INDICATOR[etasu_status(check, missing, unasked)]


def _grouped(value: int | None) -> str:
    return f"{value:,}" if value is not None else "?"


def anc_phrase(anc: AncResult | None, tz: tzinfo) -> str:
    if anc is None:
        return "no usable ANC on file"
    drawn = monitoring.local_date(anc.drawn, tz).isoformat()
    category = CATEGORY.get(anc.category, "") if anc.category else ""
    return f"ANC {_grouped(anc.anc)}/µL{f' ({category})' if category else ''} on {drawn}"


def _short(text: str) -> str:
    return text if len(text) < SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 2] + "…"


def _findings(check: EtasuCheck, missing: tuple[str, ...]) -> list[Finding]:
    """The reasons the card shows: a participant the order does not name is not judged (the
    pharmacy is the dispense's to check; a prescriber not found is said so instead)."""
    unasked: set[str] = set()
    for _, codes, participant in REQUIREMENTS.values():
        if participant in missing:
            unasked |= codes
    return [f for f in (*check.denials, *check.rationale) if f.code not in unasked]


def order_summary(
    indicator: str,
    findings: list[Finding],
    status: RemsStatus | None,
    missing: tuple[str, ...],
    tz: tzinfo,
    discharge_cap: int | None = None,
) -> str:
    """``discharge_cap``: the days an inpatient-only pharmacy may give at this discharge."""
    verdict = VERDICT[indicator]
    if indicator == "warning" and not findings and "prescriber" in missing:
        verdict = "prescriber unknown"
    labels = list(dict.fromkeys(SHORT.get(f.code, f.code) for f in findings))
    head = f"Clozapine {verdict}" + (f" ({', '.join(labels)})" if labels else "")
    anc = status.newest_anc if status is not None else None
    cap = f" · at most {discharge_cap} days at discharge" if discharge_cap is not None else ""
    return _short(f"{head}: {anc_phrase(anc, tz)}{cap}")


def next_steps(
    findings: list[Finding], status: RemsStatus | None, max_days: int | None, today: date
) -> list[str]:
    """What resolves each reason, in the order a prescriber would act."""
    steps: list[str] = []
    codes = {f.code for f in findings}
    window_end = status.psf_window_end if status is not None else None
    if Code.PATIENT_NOT_ENROLLED in codes:
        steps.append("Enroll the patient: an enrollment PSF with an ANC drawn within 30 days.")
    if Code.PRESCRIBER_NOT_CERTIFIED in codes:
        steps.append(
            "The prescriber must be certified in the Clozapine REMS (or a certified one orders)."
        )
    if codes & {Code.TREATMENT_INTERRUPTED, Code.TREATMENT_DISCONTINUED}:
        steps.append("To resume, submit a PSF with treatment status active.")
    if Code.PSF_OUT_OF_WINDOW in codes:
        when = f" — the window closed {window_end.isoformat()}" if window_end else ""
        steps.append(f"Submit the monthly PSF{when}.")
    elif window_end is not None and window_end >= today:
        steps.append(f"Submit the monthly PSF — window closes {window_end.isoformat()}.")
    if codes & {Code.ANC_BELOW_THRESHOLD, Code.LABS_MISSED}:
        steps.append(
            "Give a treatment rationale: override this card with a reason; it becomes the "
            "monthly PSF draft's rationale, to be signed by the prescriber."
        )
    if Code.LABS_MISSED in codes or Code.ANC_BELOW_THRESHOLD in codes:
        steps.append("Order a CBC with differential (an ANC now).")
    if Code.PHARMACY_NOT_CERTIFIED in codes:
        steps.append("Send the order to a pharmacy certified for this setting.")
    if Code.DISCHARGE_SUPPLY_EXCEEDS_LIMIT in codes and max_days is not None:
        steps.append(f"Reduce the discharge supply to at most {max_days} days.")
    if status is not None and status.next_anc_due is not None and status.next_anc_due <= today:
        steps.append(
            f"An ANC was due {status.next_anc_due.isoformat()}: order a CBC with differential."
        )
    return list(dict.fromkeys(steps))


def _monitoring_lines(status: RemsStatus | None, tz: tzinfo) -> list[str]:
    if status is None:
        return ["No registry patient matched the patient's identifiers."]
    lines = [f"Newest {anc_phrase(status.newest_anc, tz)}."]
    if status.next_anc_due is not None:
        frequency = status.reported_frequency.value.replace("_", " ")
        lines.append(f"Next ANC due {status.next_anc_due.isoformat()} (monitoring {frequency}).")
    if status.psf_window_end is not None:
        lines.append(f"PSF window ends {status.psf_window_end.isoformat()}.")
    if status.pending_signatures:
        lines.append(
            f"{len(status.pending_signatures)} PSF(s) wait for the prescriber's signature."
        )
    return lines


def _bullets(items: list[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


def order_detail(
    order: HookOrder,
    check: EtasuCheck,
    findings: list[Finding],
    status: RemsStatus | None,
    indicator: str,
    tz: tzinfo,
) -> str:
    decision = check.decision
    assert decision is not None
    today = monitoring.local_date(order.request.dispense_date, tz)
    parts = [
        f"**{VERDICT[indicator].capitalize()}** if dispensed today ({today.isoformat()}); "
        "a check only: no RDA was issued and no dispense recorded."
    ]
    if findings:
        parts.append("**Reasons**\n\n" + _bullets([f"{f.text} (`{f.code}`)" for f in findings]))
    if order.problems:
        unread = [f"{i.diagnostics} (`{', '.join(i.expression)}`)" for i in order.problems]
        parts.append("**The order could not be read in full**\n\n" + _bullets(unread))
    if "prescriber" in order.missing:
        parts.append(
            "The order names no prescriber NPI (requester), and the user's could not be found."
        )
    if "pharmacy" in order.missing:
        parts.append("No pharmacy named: its certification is checked when it dispenses.")
    steps = next_steps(findings, status, check.discharge_cap, today)
    if steps:
        parts.append("**Next steps**\n\n" + _bullets(steps))
    parts.append("**Monitoring**\n\n" + _bullets(_monitoring_lines(status, tz)))
    if check.discharge_cap is not None:
        days = order.request.days_supply
        ordered = f"ordered: {days} days" if days else "no days supply ordered"
        parts.append(
            f"**Discharge supply**: at most {check.discharge_cap} days from this "
            f"inpatient-only pharmacy ({ordered})."
        )
    if decision.warnings:
        parts.append(
            "**Warnings**\n\n" + _bullets([f"{w.text} (`{w.code}`)" for w in decision.warnings])
        )
    return "\n\n".join(parts)


def cbc_suggestion(uuid: str, patient_ref: str, user: str | None) -> dict[str, Any]:
    """Order an ANC now: a draft ServiceRequest for a CBC with differential."""
    code, display = CBC_WITH_DIFFERENTIAL
    request: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
        "subject": {"reference": patient_ref},
    }
    if user:
        request["requester"] = {"reference": user}
    return {
        "label": "Order a CBC with differential (ANC)",
        "uuid": uuid,
        "isRecommended": True,
        "actions": [
            {"type": "create", "description": "CBC with differential, now", "resource": request}
        ],
    }


def reduce_supply_suggestion(uuid: str, order: HookOrder, days: int) -> dict[str, Any] | None:
    """Discharge over the cap: the same order with the supply the pharmacy may give."""
    if not order.resource.get("id"):
        return None
    resource = dict(order.resource)
    dispense = dict(resource.get("dispenseRequest") or {})
    dispense["expectedSupplyDuration"] = {
        "value": days, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d",
    }  # fmt: skip
    resource["dispenseRequest"] = dispense
    return {
        "label": f"Reduce the discharge supply to {days} days",
        "uuid": uuid,
        "actions": [{"type": "update", "description": f"{days} days supply", "resource": resource}],
    }


def override_reasons(pack_reasons: list[str]) -> list[dict[str, str]]:
    wanted = [code for code, (reason, _) in OVERRIDE_REASONS.items() if reason in pack_reasons]
    return [
        {"system": OVERRIDE_SYSTEM, "code": code, "display": OVERRIDE_REASONS[code][1]}
        for code in wanted
    ]


def order_card(
    uuid: str,
    order: HookOrder,
    check: EtasuCheck,
    status: RemsStatus | None,
    source: CardSource,
    patient_ref: str,
    user: str | None,
    pack_reasons: list[str],
    tz: tzinfo,
    new_uuid: Any,
) -> OrderCard:
    """The card of one clozapine order; ``new_uuid()`` names its suggestions."""
    indicator = indicator_of(check, order.missing)
    findings = _findings(check, order.missing)
    decision = check.decision
    assert decision is not None
    card: dict[str, Any] = {
        "uuid": uuid,
        "summary": order_summary(
            indicator, findings, status, order.missing, tz, check.discharge_cap
        ),
        "indicator": indicator,
        "detail": order_detail(order, check, findings, status, indicator, tz),
        "source": source.as_json(),
    }
    suggestions = []
    codes = {f.code for f in findings}
    today = monitoring.local_date(order.request.dispense_date, tz)
    due = status.next_anc_due if status is not None else None
    if codes & {Code.LABS_MISSED, Code.ANC_BELOW_THRESHOLD} or (due is not None and due <= today):
        suggestions.append(cbc_suggestion(new_uuid(), patient_ref, user))
    if Code.DISCHARGE_SUPPLY_EXCEEDS_LIMIT in codes and check.discharge_cap is not None:
        reduce = reduce_supply_suggestion(new_uuid(), order, check.discharge_cap)
        if reduce is not None:
            suggestions.append(reduce)
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "at-most-one"
    if check.rationale and not check.denials:
        card["overrideReasons"] = override_reasons(pack_reasons)
    return OrderCard(card, indicator, tuple(f.code for f in findings))


def monitoring_card(uuid: str, status: RemsStatus, source: CardSource, tz: tzinfo) -> OrderCard:
    """patient-view: where the patient's monitoring stands."""
    today = monitoring.local_date(status.at, tz)
    late = status.next_anc_due is not None and status.next_anc_due < today
    closed = status.psf_window_end is not None and status.psf_window_end < today
    if not status.enrolled:
        summary = "Clozapine REMS: the patient is not enrolled"
    else:
        parts = [f"Clozapine REMS: {anc_phrase(status.newest_anc, tz)}"]
        if status.next_anc_due is not None:
            parts.append(f"next ANC due {status.next_anc_due.isoformat()}")
        if status.psf_window_end is not None:
            parts.append(f"PSF window ends {status.psf_window_end.isoformat()}")
        summary = " · ".join(parts)
    warn = late or closed or bool(status.pending_signatures)
    lines = _monitoring_lines(status, tz)
    lines.insert(
        0,
        f"Treatment status: {status.treatment_status.value}; "
        f"enrolled: {'yes' if status.enrolled else 'no'}.",
    )
    if late:
        lines.append("The ANC is overdue: order a CBC with differential.")
    if closed:
        lines.append(
            "The PSF window has closed: outpatient dispenses are denied until a PSF is accepted."
        )
    card = {
        "uuid": uuid,
        "summary": _short(summary),
        "indicator": "warning" if warn and status.enrolled else "info",
        "detail": _bullets(lines),
        "source": source.as_json(),
    }
    return OrderCard(card, card["indicator"], ())
