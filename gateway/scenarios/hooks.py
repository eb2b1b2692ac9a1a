"""`hook` steps (docs/contracts.md §2, §6): a CDS Hooks request as an EHR sends it — a file of
fixtures/cds-hooks/ or written inline — posted to the hook's service, and optionally the user's
feedback on its first card.

```yaml
- at: 2021-12-20T15:30:00Z
  hook:
    request: ../cds-hooks/order-sign-low-anc.json   # relative to the scenario file (or inline)
    patient: P1          # the prefetched Patient carries this handle's identifiers
    feedback: {outcome: overridden, reason: risk-benefit-ratio, comment: "Stable for years."}
  expect: {cards: 1, indicator: warning, summary: ["rationale required", "ANC 900/µL"],
           override_reasons: [risk-benefit-ratio], draft: {rationale_needed: true}}
```

The answer's keys: `cards` (how many), `indicator`, `summary` and `detail` (of the first card;
`summary` and `detail` expectations are fragments that must all appear), `override_reasons` (the
first card's codes; expected ones must be among them), `http_status`, and `feedback_status`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from rems_core.model import Identifier

FEEDBACK_KEYS = {"outcome", "reason", "comment", "at"}
OVERRIDE_SYSTEM = "urn:rems-gateway:cds-override-reason"


class HookStepError(ValueError):
    """A hook step that cannot be read as written; the text names the place."""


@dataclass
class HookFeedback:
    outcome: str  # accepted | overridden
    reason: str | None = None
    comment: str = ""
    at: datetime | None = None  # outcomeTimestamp: the step's time unless given


@dataclass
class HookStep:
    request_file: str | None
    body: dict[str, Any] = field(default_factory=dict)  # the request (read from the file at load)
    patient: str | None = None
    feedback: HookFeedback | None = None

    @property
    def service(self) -> str:
        return f"clozapine-rems-{self.body.get('hook', '')}"

    def read_file(self, scenario_path: Path, where: str) -> None:
        """The request file, relative to the scenario file."""
        if self.request_file is None:
            return
        path = (scenario_path.parent / self.request_file).resolve()
        try:
            self.body = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise HookStepError(f"{where}.request: cannot read {path}: {exc.strerror}") from None
        except ValueError:
            raise HookStepError(f"{where}.request: {path} is not JSON") from None
        if not isinstance(self.body, dict) or "hook" not in self.body:
            raise HookStepError(f"{where}.request: {path} is not a CDS Hooks request")


def hook_step(body: Any, where: str, aware: Any, tz: tzinfo) -> HookStep:
    """``aware(value, tz, where)`` reads a time as the scenario loader does."""
    if not isinstance(body, dict):
        raise HookStepError(f"{where}: expected a mapping")
    unknown = sorted(set(body) - {"request", "patient", "feedback"})
    if unknown:
        raise HookStepError(f"{where}: unknown keys {unknown} (known: feedback, patient, request)")
    request = body.get("request")
    if isinstance(request, str):
        step = HookStep(request)
    elif isinstance(request, dict) and "hook" in request:
        step = HookStep(None, request)
    else:
        raise HookStepError(f"{where}.request: a request file, or the request written inline")
    step.patient = None if body.get("patient") is None else str(body["patient"])
    given = body.get("feedback")
    if given is not None:
        if not isinstance(given, dict) or set(given) - FEEDBACK_KEYS:
            raise HookStepError(f"{where}.feedback: keys {sorted(FEEDBACK_KEYS)}")
        outcome = str(given.get("outcome", ""))
        if outcome not in ("accepted", "overridden"):
            raise HookStepError(f"{where}.feedback.outcome: accepted or overridden")
        at = aware(given["at"], tz, f"{where}.feedback.at") if "at" in given else None
        reason = None if given.get("reason") is None else str(given["reason"])
        step.feedback = HookFeedback(outcome, reason, str(given.get("comment") or ""), at)
    return step


def request_body(step: HookStep, identifiers: list[Identifier] | None) -> dict[str, Any]:
    """The request to send: the prefetched Patient carries the handle's identifiers when the
    step names a patient."""
    body = copy.deepcopy(step.body)
    patient = (body.get("prefetch") or {}).get("patient")
    if identifiers is not None and isinstance(patient, dict):
        patient["identifier"] = [{"system": i.system, "value": i.value} for i in identifiers]
    return body


def feedback_body(card: dict[str, Any], feedback: HookFeedback, at: datetime) -> dict[str, Any]:
    item: dict[str, Any] = {
        "card": card.get("uuid"),
        "outcome": feedback.outcome,
        "outcomeTimestamp": (feedback.at or at).isoformat(),
    }
    if feedback.reason is not None:
        item["overrideReason"] = {
            "reason": {"system": OVERRIDE_SYSTEM, "code": feedback.reason},
            "userComment": feedback.comment,
        }
    return {"feedback": [item]}


def hook_fields(status: int, answer: Any) -> dict[str, Any]:
    """A hook's answer as the runner compares it."""
    fields: dict[str, Any] = {"http_status": status, "warnings": []}
    if status != 200 or not isinstance(answer, dict):
        return fields | {"cards": 0}
    cards = answer.get("cards") or []
    fields["cards"] = len(cards)
    if cards:
        first = cards[0]
        fields |= {
            "indicator": first.get("indicator"),
            "summary": first.get("summary", ""),
            "detail": first.get("detail", ""),
            "override_reasons": [c.get("code") for c in first.get("overrideReasons") or []],
        }
    return fields


def first_card(answer: Any) -> dict[str, Any] | None:
    cards = answer.get("cards") if isinstance(answer, dict) else None
    return cards[0] if cards else None


async def send_hook(
    http: Any,
    hook: HookStep,
    identifiers: list[Identifier] | None,
    at: datetime,
    auth: Any,
) -> dict[str, Any]:
    """Post the hook (and its feedback on the first card) with ``http`` (an httpx client);
    ``auth(path)`` gives the headers that authenticate a call to ``path``."""
    path = f"/cds-services/{hook.service}"
    headers = {"X-Clinical-Time": at.isoformat(), "Content-Type": "application/json"}
    response = await http.post(
        path, content=json.dumps(request_body(hook, identifiers)), headers=headers | auth(path)
    )
    answer = _json(response)
    fields = hook_fields(response.status_code, answer)
    card = first_card(answer)
    if hook.feedback is not None and card is not None:
        feedback = f"{path}/feedback"
        sent = await http.post(
            feedback,
            content=json.dumps(feedback_body(card, hook.feedback, at)),
            headers=headers | auth(feedback),
        )
        fields["feedback_status"] = sent.status_code
    return fields


def _json(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
