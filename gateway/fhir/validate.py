"""`POST /fhir/{type}/$validate`: the checks a create would make — the R4B model and our mapping's
— without storing or judging anything. Per the FHIR spec the answer is 200 with an
OperationOutcome whether or not the resource is valid; 4xx only when it could not be validated
(not JSON, not a resource)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request

from gateway.fhir import capability, observations, questionnaires
from gateway.fhir.auth import Principal, requires
from gateway.fhir.http import FhirError, FhirResponse, check_format, json_body
from gateway.fhir.resources import clinical_now, validated
from mappings.fhir.medication_request import read_medication_request
from mappings.fhir.outcome import Issue, operation_outcome

router = APIRouter(tags=["$validate"])
VALIDATE = ("validate", "http://hl7.org/fhir/OperationDefinition/Resource-validate")
Check = Callable[[Request, dict[str, Any]], None]  # raises FhirError with the issues


def issues_of(check: Check, request: Request, data: dict[str, Any]) -> list[Issue]:
    try:
        check(request, data)
    except FhirError as error:
        return error.issues
    return []


def observation(request: Request, data: dict[str, Any]) -> None:
    observations.reading(request, data)


def questionnaire_response(request: Request, data: dict[str, Any]) -> None:
    questionnaires.checked(request, data, clinical_now(request, data))


def medication_request(request: Request, data: dict[str, Any]) -> None:
    resource = validated(data, "MedicationRequest")
    found = read_medication_request(resource, clinical_now(request, data))
    errors = [p for p in found.problems if p.severity in ("error", "fatal")]
    if errors or found.request is None:
        raise FhirError(422, "invalid", "", issues=found.problems)


CHECKS: dict[str, Check] = {
    "Observation": observation,
    "QuestionnaireResponse": questionnaire_response,
    "MedicationRequest": medication_request,
}


def bundle(request: Request, data: dict[str, Any]) -> None:
    """The Bundle as R4B, then each entry our checks know, its issues placed in the entry."""
    validated(data, "Bundle")
    issues: list[Issue] = []
    for index, entry in enumerate(data.get("entry") or []):
        resource = entry.get("resource") or {}
        check = CHECKS.get(resource.get("resourceType", ""))
        if check is not None:
            root = f"Bundle.entry[{index}].resource"
            found = issues_of(check, request, resource)
            issues += [_placed(issue, resource["resourceType"], root) for issue in found]
    if issues:
        raise FhirError(422, "invalid", "", issues=issues)


def _placed(issue: Issue, resource_type: str, root: str) -> Issue:
    moved = tuple(
        root + e.removeprefix(resource_type) if e.startswith(resource_type) else f"{root}.{e}"
        for e in issue.expression
    )
    return Issue(issue.severity, issue.code, issue.diagnostics, moved, issue.rems_code)


CHECKS["Bundle"] = bundle


def resource_in(data: dict[str, Any], resource_type: str) -> dict[str, Any]:
    """The resource itself, or Parameters with a `resource` parameter (the operation's input)."""
    if data["resourceType"] != "Parameters" or resource_type == "Parameters":
        return data
    for parameter in data.get("parameter") or []:
        if isinstance(parameter, dict) and parameter.get("name") == "resource":
            resource = parameter.get("resource")
            if isinstance(resource, dict):
                return resource
    raise FhirError(
        400, "required", "Parameters need a resource parameter", ("Parameters.parameter",)
    )


def _route(resource_type: str, check: Check) -> None:
    allowed = requires(resource_type, "create")

    async def validate(request: Request, _: Principal = allowed) -> FhirResponse:
        check_format(request)
        data = resource_in(await json_body(request), resource_type)
        issues = issues_of(check, request, data)
        if not any(i.severity in ("error", "fatal") for i in issues):
            issues = [Issue("information", "informational", "valid"), *issues]
        return FhirResponse(operation_outcome(issues), 200)

    router.add_api_route(
        f"/{resource_type}/$validate",
        validate,
        methods=["POST"],
        name=f"validate_{resource_type}",
        summary=f"Validate a {resource_type} without storing it",
    )


for _type, _check in CHECKS.items():
    _route(_type, _check)


def declare_operations() -> None:
    """$validate on each type it serves, beside what the type's routes declared (called when
    the router is built, after every module declared its types)."""
    for resource_type in CHECKS:
        entry = capability.RESOURCES.setdefault(
            resource_type,
            {"interactions": [], "search": [], "operations": [], "conditional_create": False},
        )
        if VALIDATE not in entry["operations"]:
            entry["operations"] = [*entry["operations"], VALIDATE]
