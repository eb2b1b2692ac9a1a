"""The `tasks` and `draft` answers of a step (docs/contracts.md §2): the patient's open tasks and
monthly draft read from the FHIR resources the gateway keeps for them (a Task, a
QuestionnaireResponse `in-progress`), the same on every channel."""

from __future__ import annotations

from typing import Any

from gateway.scenarios.file import ScenarioError, Step


def task_kind(task: dict[str, Any]) -> str:
    """The kind of a Task: its code (`urn:rems-gateway:task|psf-due`)."""
    return str(task["code"]["coding"][0]["code"])


def answers(body: dict[str, Any], link_id: str) -> list[dict[str, Any]]:
    """The answers of the draft's top-level item ``link_id`` (every repetition of it)."""
    found = [item for item in body.get("item") or () if item.get("linkId") == link_id]
    return [answer for item in found for answer in item.get("answer") or ()]


def draft_fields(body: dict[str, Any]) -> dict[str, Any]:
    """What the draft pre-fills, as `expect: {draft: …}` names it."""
    due = answers(body, "due-date")
    needed = answers(body, "rationale-needed")
    recommended = answers(body, "recommended-frequency")
    return {
        "due": due[0]["valueDate"] if due else None,
        "ancs": sum(1 for item in body.get("item") or () if item.get("linkId") == "anc"),
        "rationale_needed": bool(needed and needed[0].get("valueBoolean")),
        "recommended_frequency": recommended[0]["valueCoding"]["code"] if recommended else None,
        "missed_draws": len(answers(body, "missed-draws")),
        "versions": int(body.get("meta", {}).get("versionId", 0)),
        "rationale": _held_rationale(body),
    }


def _held_rationale(body: dict[str, Any]) -> str | None:
    """The rationale reason the draft holds (a CDS override's), None when it holds none."""
    for item in body.get("item") or ():
        if item.get("linkId") == "rationale":
            for part in item.get("item") or ():
                if part.get("linkId") == "rationale.reason":
                    return str(part["answer"][0]["valueCoding"]["code"])
    return None


def one_draft(step: Step, drafts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The patient's open draft (None: there is none); the worklist keeps one at a time."""
    if len(drafts) > 1:
        ids = ", ".join(str(d.get("id")) for d in drafts)
        raise ScenarioError(f"{step.label}: the patient has {len(drafts)} open drafts ({ids})")
    return drafts[0] if drafts else None


def worklist_fields(
    step: Step, tasks: list[dict[str, Any]], drafts: list[dict[str, Any]]
) -> dict[str, Any]:
    """`tasks` (the open tasks' kinds) and `draft` (None, or what the open draft pre-fills)."""
    draft = one_draft(step, drafts)
    return {
        "tasks": sorted({task_kind(t) for t in tasks}),
        "draft": draft_fields(draft) if draft is not None else None,
    }


def completing(response: dict[str, Any], draft: dict[str, Any]) -> dict[str, Any]:
    """A psf step's response as the completion of ``draft`` (`PUT` of its id): the step's
    answers, with the draft's pre-filled ANC results kept."""
    prefilled = [item for item in draft.get("item") or () if item.get("linkId") == "anc"]
    return {**response, "id": draft["id"], "item": [*prefilled, *response["item"]]}
