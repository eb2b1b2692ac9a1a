"""A PSF's outcome (docs/contracts.md §3) on FHIR: an extension of the stored QuestionnaireResponse,
the same extension on the summary issue of an OperationOutcome, and the prescriber's signature.

    {"url": "urn:rems-gateway:fhir:psf-outcome", "extension": [
        {"url": "status", "valueCode": "pending_prescriber_signature"},
        {"url": "accepted", "valueBoolean": false},
        {"url": "psf-id", "valueString": "psf-…"},
        {"url": "patient", "valueString": "<REMS patient id>"},
        {"url": "reason", "valueCoding": {"system": "urn:rems-gateway:codes", "code": …}},
        {"url": "warning", "valueCoding": {…}},
        {"url": "rule-pack", "valueString": …}, {"url": "rule-pack-version", "valueString": …}]}
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mappings.fhir.outcome import REMS_CODES, Issue
from mappings.fhir.references import NPI_SYSTEM
from rems_core.model import Finding, PsfOutcome, PsfStatus

PSF_OUTCOME = "urn:rems-gateway:fhir:psf-outcome"
FINDING_KIND = "urn:rems-gateway:fhir:psf-finding"  # on an issue: reason | warning
SIGNATURE = "http://hl7.org/fhir/StructureDefinition/questionnaireresponse-signature"
AUTHOR_SIGNATURE = {
    "system": "urn:iso-astm:E1762-95:2013",
    "code": "1.2.840.10065.1.12.1.1",
    "display": "Author's Signature",
}
OURS = (PSF_OUTCOME, SIGNATURE)  # never taken from a client: only the gateway says these
TEXT = {
    PsfStatus.ACCEPTED: "PSF accepted",
    PsfStatus.REJECTED: "PSF rejected",
    PsfStatus.PENDING_PRESCRIBER_SIGNATURE: "PSF held for the prescriber's signature",
}


def outcome_extension(outcome: PsfOutcome) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"url": "status", "valueCode": outcome.status.value},
        {"url": "accepted", "valueBoolean": outcome.accepted},
    ]
    if outcome.psf_id:
        parts.append({"url": "psf-id", "valueString": outcome.psf_id})
    if outcome.patient:
        parts.append({"url": "patient", "valueString": outcome.patient})
    parts += [{"url": "reason", "valueCoding": _coding(f)} for f in outcome.reasons]
    parts += [{"url": "warning", "valueCoding": _coding(f)} for f in outcome.warnings]
    if outcome.rule_pack:
        parts.append({"url": "rule-pack", "valueString": outcome.rule_pack})
        parts.append({"url": "rule-pack-version", "valueString": outcome.rule_pack_version})
    return {"url": PSF_OUTCOME, "extension": parts}


def _coding(found: Finding) -> dict[str, str]:
    return {"system": REMS_CODES, "code": found.code, "display": found.text}


def signature_extension(npi: str, at: datetime) -> dict[str, Any]:
    who = {"type": "Practitioner", "identifier": {"system": NPI_SYSTEM, "value": npi}}
    signature = {"type": [AUTHOR_SIGNATURE], "when": at.isoformat(), "who": who}
    return {"url": SIGNATURE, "valueSignature": signature}


def with_outcome(
    body: dict[str, Any], outcome: PsfOutcome, signature: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``body`` with the gateway's outcome (and signature), replacing any a client sent."""
    kept = [e for e in body.get("extension", []) if e.get("url") not in OURS]
    added = [outcome_extension(outcome), *([signature] if signature else [])]
    return body | {"extension": [*kept, *added]}


def _extension(body: dict[str, Any], url: str) -> dict[str, Any] | None:
    return next((e for e in body.get("extension", []) if e.get("url") == url), None)


def stored_outcome(body: dict[str, Any]) -> PsfOutcome | None:
    """The outcome a stored QuestionnaireResponse carries."""
    extension = _extension(body, PSF_OUTCOME)
    if extension is None:
        return None
    values: dict[str, Any] = {}
    reasons: list[Finding] = []
    warnings: list[Finding] = []
    for part in extension["extension"]:
        if part["url"] in ("reason", "warning"):
            coding = part["valueCoding"]
            found = Finding(coding["code"], coding.get("display", ""))
            (reasons if part["url"] == "reason" else warnings).append(found)
        else:
            values[part["url"]] = next(v for k, v in part.items() if k.startswith("value"))
    return PsfOutcome(
        PsfStatus(values["status"]),
        tuple(reasons),
        tuple(warnings),
        values.get("psf-id", ""),
        values.get("rule-pack", ""),
        values.get("rule-pack-version", ""),
        values.get("patient"),
    )


def psf_issues(outcome: PsfOutcome) -> list[Issue]:
    """The outcome as OperationOutcome issues: a summary carrying the outcome extension, one
    issue per reason (an error when rejected) and per warning, each marked reason or warning."""
    summary = Issue(
        "information",
        "informational",
        TEXT[outcome.status],
        extensions=(outcome_extension(outcome),),
    )
    rejected = outcome.status == PsfStatus.REJECTED
    reasons = [
        _finding_issue(f, "error" if rejected else "warning", "reason") for f in outcome.reasons
    ]
    warnings = [_finding_issue(f, "warning", "warning") for f in outcome.warnings]
    return [summary, *reasons, *warnings]


def _finding_issue(found: Finding, severity: str, kind: str) -> Issue:
    marker = ({"url": FINDING_KIND, "valueCode": kind},)
    return Issue(severity, "business-rule", found.text, rems_code=found.code, extensions=marker)
