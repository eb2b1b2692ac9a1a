"""What the gateway's FHIR endpoint answered, as a scenario step's result keys
(docs/contracts.md §3).

Every answer is read from an OperationOutcome (`Prefer: return=OperationOutcome`) or a Bundle
response: an ANC and its category from issue extensions (mappings/fhir/outcome.py), a dispense
decision from the `urn:rems-gateway:fhir:rems-decision` extension of the first issue
(mappings/fhir/medication_request.py), a PSF outcome from `urn:rems-gateway:fhir:psf-outcome`
(mappings/fhir/psf_outcome.py), a dispense record's outcome from
`urn:rems-gateway:fhir:dispense-outcome` (mappings/fhir/medication_dispense.py), and our codes
from `details.coding`. An error answer (4xx) has
only the issues: its codes are the `reasons` of a dispense or PSF step.
"""

from __future__ import annotations

from typing import Any

from mappings.fhir.medication_dispense import OUTCOME_EXTENSION
from mappings.fhir.medication_request import DECISION_EXTENSION
from mappings.fhir.outcome import ANC_EXTENSION, CATEGORY_EXTENSION, REMS_CODES
from mappings.fhir.psf_outcome import PSF_OUTCOME


def outcome_issues(body: Any) -> list[dict[str, Any]]:
    """The issues of an OperationOutcome, of every entry's outcome of a Bundle answer, or of
    the OperationOutcome of a response message ($process-message)."""
    if not isinstance(body, dict):
        return []
    if body.get("resourceType") == "Bundle" and body.get("type") == "message":
        outcomes = [e.get("resource") or {} for e in body.get("entry") or []]
        return [
            i for o in outcomes if o.get("resourceType") == "OperationOutcome" for i in o["issue"]
        ]
    if body.get("resourceType") == "Bundle":
        return [
            issue
            for entry in body.get("entry") or []
            for issue in (entry.get("response", {}).get("outcome") or {}).get("issue") or []
        ]
    return list(body.get("issue") or []) if body.get("resourceType") == "OperationOutcome" else []


def coded_findings(issues: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Our codes in the issues' details.coding, with the issue's text."""
    return [
        {"code": coding["code"], "text": issue.get("diagnostics", "")}
        for issue in issues
        for coding in (issue.get("details") or {}).get("coding") or []
        if coding.get("system") == REMS_CODES
    ]


def lab_fields(status: int, body: Any) -> dict[str, Any]:
    """`anc`, `category`, `warnings`, `http_status` and `ack` of an answer to labs."""
    anc = category = None
    issues = outcome_issues(body)
    for issue in issues:
        values = {e.get("url"): e for e in issue.get("extension") or []}
        if anc is None and ANC_EXTENSION in values:
            anc = values[ANC_EXTENSION]["valueQuantity"]["value"]
            category = values.get(CATEGORY_EXTENSION, {}).get("valueCode")
    failed = status >= 400 or _entry_failed(body)
    return {
        "anc": anc,
        "category": category,
        "warnings": coded_findings(issues),
        "http_status": status,
        "ack": "AE" if failed else "AA",
    }


def _entry_failed(body: Any) -> bool:
    """An entry of a Bundle answer that failed, or a response message that is not `ok`."""
    if isinstance(body, dict) and body.get("type") == "message":
        header = ((body.get("entry") or [{}])[0].get("resource") or {}).get("response") or {}
        return header.get("code") != "ok"
    entries = body.get("entry") or [] if isinstance(body, dict) else []
    return any(not str(e.get("response", {}).get("status", "2")).startswith("2") for e in entries)


def _extension_parts(issues: list[dict[str, Any]], url: str) -> dict[str, list[Any]] | None:
    """The sub-extensions' values by url, of the first issue carrying extension ``url``."""
    for issue in issues:
        for extension in issue.get("extension") or []:
            if extension.get("url") == url:
                values: dict[str, list[Any]] = {}
                for part in extension.get("extension") or []:
                    value = next((v for k, v in part.items() if k.startswith("value")), None)
                    values.setdefault(part.get("url", ""), []).append(value)
                return values
    return None


def _findings(codings: list[Any]) -> list[dict[str, str]]:
    return [{"code": c["code"], "text": c.get("display", "")} for c in codings]


def decision_fields(status: int, body: Any) -> dict[str, Any]:
    """A dispense decision: `outcome`, `reasons`, `warnings`, `rda`, `max_days_supply`,
    `override_possible`, `rule_pack`; an error answer (e.g. 409 for a request id used for
    another request) has no decision, its codes are the reasons, as in process."""
    issues = outcome_issues(body)
    parts = _extension_parts(issues, DECISION_EXTENSION)
    answer: dict[str, Any] = {"http_status": status, "ack": "AE" if status >= 400 else "AA"}
    if parts is None:
        return answer | {"reasons": coded_findings(issues), "warnings": []}

    def one(url: str, default: Any = None) -> Any:
        return parts.get(url, [default])[0]

    rda = one("rda")
    return answer | {
        "outcome": one("outcome"),
        "reasons": _findings(parts.get("reason", [])),
        "warnings": _findings(parts.get("warning", [])),
        "rda": rda.get("value") if isinstance(rda, dict) else None,
        "max_days_supply": one("max-days-supply"),
        "override_possible": one("override-possible", False),
        "rule_pack": one("rule-pack"),
        "rule_pack_version": one("rule-pack-version"),
        "decision_id": one("decision-id"),
    }


def psf_fields(status: int, body: Any) -> dict[str, Any]:
    """A PSF outcome: `accepted`, `status`, `reasons`, `warnings`, `psf_id`, `rule_pack`. A
    refused act (a signature the gateway will not take, nothing pending: 403, 409) is not
    accepted, its codes are the reasons, and its status `rejected` — as the service answers."""
    issues = outcome_issues(body)
    parts = _extension_parts(issues, PSF_OUTCOME)
    answer: dict[str, Any] = {"http_status": status, "ack": "AE" if status >= 400 else "AA"}
    if parts is None:
        refused = {"accepted": False, "status": "rejected", "warnings": []}
        return answer | refused | {"reasons": coded_findings(issues)}

    def one(url: str, default: Any = None) -> Any:
        return parts.get(url, [default])[0]

    return answer | {
        "accepted": bool(one("accepted", False)),
        "status": one("status"),
        "reasons": _findings(parts.get("reason", [])),
        "warnings": _findings(parts.get("warning", [])),
        "psf_id": one("psf-id"),
        "patient": one("patient"),
        "rule_pack": one("rule-pack"),
        "rule_pack_version": one("rule-pack-version"),
    }


def dispense_record_fields(parts: dict[str, list[Any]]) -> dict[str, Any]:
    """What became of a MedicationDispense: `outcome` (recorded, refused, ignored), `reasons`
    (the RDA_* refusals), `warnings`, `rda`."""
    rda = parts.get("rda", [None])[0]
    return {
        "outcome": parts.get("outcome", [None])[0],
        "reasons": _findings(parts.get("reason", [])),
        "warnings": _findings(parts.get("warning", [])),
        "rda": rda.get("value") if isinstance(rda, dict) else None,
    }


def answer_fields(status: int, body: Any) -> dict[str, Any]:
    """A raw fhir step's answer: whatever it carries — ANCs, a decision, a PSF outcome."""
    fields = lab_fields(status, body)
    issues = outcome_issues(body)
    if _extension_parts(issues, DECISION_EXTENSION) is not None:
        fields |= decision_fields(status, body)
    elif _extension_parts(issues, PSF_OUTCOME) is not None:
        fields |= psf_fields(status, body)
    elif (dispensed := _extension_parts(issues, OUTCOME_EXTENSION)) is not None:
        fields |= dispense_record_fields(dispensed)
    elif status >= 400:
        fields["reasons"] = coded_findings(issues)
    return fields
