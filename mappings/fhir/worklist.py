"""The worklist as FHIR (docs/contracts.md §7): a task as a `Task`, a monthly PSF draft as a
`QuestionnaireResponse` of `clozapine-psf`, `in-progress`, that the prescriber (or a designee)
completes and submits like any other."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from mappings.fhir.questionnaire import questionnaires
from mappings.fhir.references import NPI_SYSTEM
from rems_core.model import AncResult
from rems_core.worklist import PsfDraft

TASK_SYSTEM = "urn:rems-gateway:task"
PERFORMER_SYSTEM = "urn:rems-gateway:performer"
PSF_QUESTIONNAIRE = "clozapine-psf"
RATIONALE_SOURCE = "urn:rems-gateway:fhir:rationale-source"  # a CDS override's rationale

TASK_TITLES = {
    "psf-due": "Complete the monthly Patient Status Form",
    "psf-window-closing": "The PSF window closes soon",
    "rationale-required": "A treatment rationale is needed",
    "anc-overdue": "ANC overdue",
    "labs-missed": "Labs missed",
    "signature-pending": "A PSF waits for the prescriber's signature",
    "unmatched-result": "A result matched no registry patient",
}


def practitioner(npi: str) -> dict[str, Any]:
    return {
        "reference": f"Practitioner/{npi}",
        "identifier": {"system": NPI_SYSTEM, "value": npi},
    }


def task_body(task: dict[str, Any]) -> dict[str, Any]:
    """A task row as a FHIR Task (``id`` and ``meta`` are the store's)."""
    kind = task["kind"]
    body: dict[str, Any] = {
        "resourceType": "Task",
        "identifier": [{"system": TASK_SYSTEM, "value": task["key"]}],
        "status": task["status"],
        "intent": "order",
        "code": {
            "coding": [{"system": TASK_SYSTEM, "code": kind, "display": TASK_TITLES[kind]}],
            "text": TASK_TITLES[kind],
        },
        "description": task["reason"],
        "authoredOn": _instant(task["opened"]),
        "lastModified": _instant(task["closed"] or task["opened"]),
    }
    if task["patient_id"]:
        body["for"] = {"reference": f"Patient/{task['patient_id']}"}
    if task["focus"]:
        body["focus"] = {"reference": task["focus"]}
    if task["owner_npi"]:
        body["owner"] = practitioner(task["owner_npi"])
        performers = ["prescriber", "designee"] if task["designee_may"] else ["prescriber"]
        body["performerType"] = [
            {"coding": [{"system": PERFORMER_SYSTEM, "code": code}]} for code in performers
        ]
    if task["due"]:
        body["restriction"] = {"period": {"end": _instant(task["due"])}}
    if task["closed_why"]:
        body["statusReason"] = {"text": task["closed_why"]}
    return body


def draft_body(
    draft: PsfDraft,
    patient_id: str,
    authored: datetime,
    rationale: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The draft as an `in-progress` QuestionnaireResponse, pre-filled from the labs — and with
    the prescriber's rationale given as a CDS Hooks override (``rationale``: reason, text, card,
    user), which the prescriber's completion signs."""
    definition = questionnaires()[PSF_QUESTIONNAIRE]
    items: list[dict[str, Any]] = [
        _choice("type", "monthly"),
        {"linkId": "prescriber-npi", "answer": [{"valueString": draft.prescriber_npi}]},
        _choice("designation", draft.designation.value),
        _choice("treatment-status", "active"),
        _choice("monitoring-frequency", draft.recommended_frequency.value),
        *(_anc_item(a) for a in draft.ancs),
    ]
    if draft.missed_draws:
        missed = [{"valueDate": d.isoformat()} for d in draft.missed_draws]
        items.append({"linkId": "missed-draws", "answer": missed})
    items += [
        {"linkId": "due-date", "answer": [{"valueDate": draft.due.isoformat()}]},
        _choice("recommended-frequency", draft.recommended_frequency.value),
        {"linkId": "rationale-needed", "answer": [{"valueBoolean": bool(draft.rationale_needs)}]},
    ]
    if draft.rationale_needs:
        because = [{"valueString": need} for need in draft.rationale_needs]
        items.append({"linkId": "rationale-needed-because", "answer": because})
    body: dict[str, Any] = {}
    if rationale is not None:
        items.append(_rationale_item(rationale))
        body["extension"] = [_rationale_source(rationale)]
    return body | {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": f"{definition['url']}|{definition['version']}",
        "status": "in-progress",
        "subject": {"reference": f"Patient/{patient_id}"},
        "authored": _instant(authored),
        "author": {"type": "Practitioner", **practitioner(draft.prescriber_npi)},
        "item": items,
    }


def _rationale_item(rationale: dict[str, Any]) -> dict[str, Any]:
    parts = [_choice("rationale.reason", rationale["reason"], group="rationale")]
    if rationale.get("text"):
        parts.append({"linkId": "rationale.text", "answer": [{"valueString": rationale["text"]}]})
    return {"linkId": "rationale", "item": parts}


def _rationale_source(rationale: dict[str, Any]) -> dict[str, Any]:
    """Where the rationale came from: the CDS card overridden, and by whom (the EHR's user)."""
    parts: list[dict[str, Any]] = [{"url": "card", "valueString": rationale["card"]}]
    if rationale.get("user"):
        parts.append({"url": "user", "valueString": rationale["user"]})
    parts.append({"url": "override-reason", "valueCode": rationale["override_reason"]})
    return {"url": RATIONALE_SOURCE, "extension": parts}


#: What a draft's versions are not compared on besides id and meta: when it was written
#: (``content_hashes(body, PREFILL_ASIDE)[1]`` is its pre-fill's hash).
PREFILL_ASIDE = ("authored",)


def stopped(body: dict[str, Any]) -> dict[str, Any]:
    """A draft no longer needed: a PSF was accepted without it, or treatment stopped."""
    return {**body, "status": "stopped"}


def _anc_item(anc: AncResult) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {
            "linkId": "anc.value",
            "answer": [
                {
                    "valueQuantity": {
                        "value": anc.anc,
                        "unit": "/µL",
                        "system": "http://unitsofmeasure.org",
                        "code": "/uL",
                    }
                }
            ],
        },
        {"linkId": "anc.drawn", "answer": [{"valueDateTime": _instant(anc.drawn)}]},
        {"linkId": "anc.code", "answer": [{"valueString": anc.code or "751-8"}]},
    ]
    if anc.category is not None:
        parts.append(_choice("anc.category", anc.category.value, group="anc"))
    return {"linkId": "anc", "item": parts}


def _choice(link_id: str, code: str, group: str | None = None) -> dict[str, Any]:
    """An answer of a choice item, coded as the Questionnaire's answer option is."""
    items = questionnaires()[PSF_QUESTIONNAIRE]["item"]
    if group is not None:
        items = next(i for i in items if i["linkId"] == group)["item"]
    definition = next(i for i in items if i["linkId"] == link_id)
    coding = next(
        o["valueCoding"] for o in definition["answerOption"] if o["valueCoding"]["code"] == code
    )
    return {"linkId": link_id, "answer": [{"valueCoding": dict(coding)}]}


def _instant(moment: datetime | date) -> str:
    return moment.isoformat().replace("+00:00", "Z")
