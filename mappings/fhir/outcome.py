"""OperationOutcome: every FHIR error, and the REMS findings of an accepted request."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rems_core.model import AncResult, Finding

REMS_CODES = "urn:rems-gateway:codes"  # our reason and warning codes (docs/rules.md)
UCUM = "http://unitsofmeasure.org"


@dataclass(frozen=True)
class Issue:
    severity: str  # fatal | error | warning | information
    code: str  # FHIR issue-type: invalid, structure, required, value, not-found, security, …
    diagnostics: str
    expression: tuple[str, ...] = ()  # FHIRPath of the offending element
    rems_code: str | None = None  # one of our codes, as details.coding
    extensions: tuple[dict[str, Any], ...] = ()

    def as_json(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.rems_code:
            issue["details"] = {
                "coding": [{"system": REMS_CODES, "code": self.rems_code}],
                "text": self.diagnostics,
            }
        if self.expression:
            issue["expression"] = list(self.expression)
        if self.extensions:
            issue["extension"] = list(self.extensions)
        return issue


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    listed = [i.as_json() for i in issues]
    if not listed:
        listed = [Issue("information", "informational", "All OK").as_json()]
    return {"resourceType": "OperationOutcome", "issue": listed}


ANC_EXTENSION = "urn:rems-gateway:fhir:anc"  # the ANC per µL a result yields
CATEGORY_EXTENSION = "urn:rems-gateway:fhir:anc-category"


def lab_issues(results: Iterable[AncResult], warnings: Iterable[Finding] = ()) -> list[Issue]:
    """What the rules made of lab results: one information issue per ANC (value and category
    as extensions too), one warning per finding."""
    issues = [Issue("warning", "business-rule", w.text, rems_code=w.code) for w in warnings]
    for anc in results:
        issues.append(_anc_issue(anc))
        issues += [
            Issue("warning", "business-rule", w.text, rems_code=w.code) for w in anc.warnings
        ]
    return issues


def _anc_issue(anc: AncResult) -> Issue:
    kind = "derived ANC" if anc.derived else "ANC"
    if anc.anc is None:
        text = f"{kind}: no usable value"
    else:
        category = f", {anc.category.value}" if anc.category else ""
        text = f"{kind} {anc.anc}/µL{category}"
    extensions: list[dict[str, Any]] = []
    if anc.anc is not None:
        quantity = {"value": anc.anc, "unit": "/µL", "system": UCUM, "code": "/uL"}
        extensions.append({"url": ANC_EXTENSION, "valueQuantity": quantity})
    if anc.category is not None:
        extensions.append({"url": CATEGORY_EXTENSION, "valueCode": anc.category.value})
    return Issue("information", "informational", text, extensions=tuple(extensions))
