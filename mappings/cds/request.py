"""A hook request (CDS Hooks 2.0, and the 1.0 shapes EHRs still send) → what the engine needs:
the patient's identifiers, the prescriber's NPI, the clozapine orders as dispense requests, and
the prefetched lab results.

The edge validates JSON and R4B models; this module reads them. Orders come from
`context.draftOrders` (a typed or untyped Bundle, or a bare list of resources), narrowed to
`context.selections` for order-select, or from the discharge hook's prefetched `medications`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mappings.fhir.medication_request import RXNORM, medication_concept, order_as_dispense
from mappings.fhir.outcome import Issue
from mappings.fhir.references import NPI_SYSTEM
from rems_core.model import DispenseRequest, Identifier

MEDICATION_REQUEST = "MedicationRequest"
CLOZAPINE_TEXT = "clozapine"


class HookInvalid(ValueError):
    """A request the service cannot read; ``path`` names where (FHIRPath-like)."""

    def __init__(self, text: str, path: str = "") -> None:
        super().__init__(text)
        self.path = path


@dataclass(frozen=True)
class HookRequest:
    hook: str
    hook_instance: str
    context: dict[str, Any]  # userId filled from 1.0's top-level `user`
    prefetch: dict[str, Any]  # key → resource, or None (the EHR had nothing or could not fetch)
    fhir_server: str | None = None
    fhir_authorization: dict[str, Any] | None = None

    @property
    def patient_id(self) -> str:
        return str(self.context["patientId"])

    @property
    def user_id(self) -> str | None:
        user = self.context.get("userId")
        return user if isinstance(user, str) and user else None


def read_hook_request(data: Any, hook: str) -> HookRequest:
    """The request's envelope, checked (the resources inside are validated by the edge)."""
    if not isinstance(data, dict):
        raise HookInvalid("the request body must be a JSON object")
    if data.get("hook") != hook:
        raise HookInvalid(f"this service answers the {hook} hook", "hook")
    instance = data.get("hookInstance")
    if not isinstance(instance, str) or not instance.strip():
        raise HookInvalid("hookInstance is required (a UUID)", "hookInstance")
    context = data.get("context")
    if not isinstance(context, dict):
        raise HookInvalid("context is required (an object)", "context")
    context = dict(context)
    if "userId" not in context and isinstance(data.get("user"), str):
        context["userId"] = data["user"]  # CDS Hooks 1.0 sent the user beside the context
    patient = context.get("patientId")
    if not isinstance(patient, str) or not patient:
        raise HookInvalid("context.patientId is required", "context.patientId")
    prefetch = data.get("prefetch") or {}
    if not isinstance(prefetch, dict):
        raise HookInvalid("prefetch must be an object of resources", "prefetch")
    for key, value in prefetch.items():
        if value is not None and not (isinstance(value, dict) and "resourceType" in value):
            raise HookInvalid("a prefetch value is a FHIR resource or null", f"prefetch.{key}")
    server = data.get("fhirServer")
    if server is not None and not isinstance(server, str):
        raise HookInvalid("fhirServer must be a URL", "fhirServer")
    authorization = data.get("fhirAuthorization")
    if authorization is not None and not isinstance(authorization, dict):
        raise HookInvalid("fhirAuthorization must be an object", "fhirAuthorization")
    return HookRequest(hook, instance, context, prefetch, server, authorization)


def bundle_resources(bundle: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
    """(where, resource) of a Bundle's entries — typed or untyped (1.0) — or of a bare list."""
    if bundle is None:
        return []
    if isinstance(bundle, list):
        entries = [{"resource": item} for item in bundle]
    elif isinstance(bundle, dict) and bundle.get("resourceType") == "Bundle":
        entries = bundle.get("entry") or []
    elif isinstance(bundle, dict) and "resourceType" in bundle:
        entries = [{"resource": bundle}]  # one resource where a Bundle was expected
    else:
        raise HookInvalid("expected a Bundle of resources", path)
    found = []
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or "resourceType" not in resource:
            raise HookInvalid("an entry without a resource", f"{path}.entry[{index}]")
        found.append((f"{path}.entry[{index}].resource", resource))
    return found


def order_reference(resource: dict[str, Any], index: int) -> str:
    """How a selection names an order: `MedicationRequest/<id>` (an order without an id: by
    its place in draftOrders)."""
    rid = resource.get("id")
    kind = resource.get("resourceType", MEDICATION_REQUEST)
    return f"{kind}/{rid}" if rid else f"{kind}/#{index}"


def selected(
    orders: list[tuple[str, dict[str, Any]]], selections: Any
) -> list[tuple[str, dict[str, Any]]]:
    """order-select: the orders `context.selections` names (all of them when it names none)."""
    if not isinstance(selections, list) or not selections:
        return orders
    wanted = {str(s) for s in selections}
    return [
        (where, resource)
        for index, (where, resource) in enumerate(orders)
        if order_reference(resource, index) in wanted
        or f"{resource.get('resourceType')}/{resource.get('id')}" in wanted
    ]


def patient_identifiers(patient: Any) -> tuple[Identifier, ...]:
    """A validated Patient's identifiers that could name a registry patient."""
    return tuple(
        Identifier(i.system, str(i.value)) for i in patient.identifier or [] if i.system and i.value
    )


def practitioner_npi(practitioner: Any) -> str | None:
    for identifier in getattr(practitioner, "identifier", None) or []:
        if identifier.system == NPI_SYSTEM and identifier.value:
            return str(identifier.value)
    return None


@dataclass
class HookOrder:
    """One clozapine order of the hook, as a dispense request now (read-only: no override)."""

    reference: str
    resource: dict[str, Any]
    request: DispenseRequest
    missing: tuple[str, ...]  # participants it does not name: "prescriber", "pharmacy"
    problems: list[Issue] = field(default_factory=list)


def medication_codes(order: Any) -> tuple[list[str], str]:
    """The RxNorm codes and the text of what the order names."""
    concept = medication_concept(order)
    codings = getattr(concept, "coding", None) or []
    codes = [str(c.code) for c in codings if c.system == RXNORM and c.code]
    reference = order.medicationReference
    texts = [getattr(concept, "text", None) or "", getattr(reference, "display", None) or ""]
    texts += [c.display or "" for c in codings]
    return codes, " ".join(t for t in texts if t)


def clozapine_drug(order: Any, clozapine_rxnorm: list[str]) -> str | None:
    """The order's clozapine RxNorm code; an order coded only as text naming clozapine is the
    pack's first clozapine code; None: not a clozapine order (no card)."""
    codes, text = medication_codes(order)
    for code in codes:
        if code in clozapine_rxnorm:
            return code
    if not codes and CLOZAPINE_TEXT in text.lower():
        return clozapine_rxnorm[0]
    return None


def hook_order(
    reference: str, resource: dict[str, Any], order: Any, drug: str, now: datetime
) -> HookOrder:
    """A clozapine order as the dispense it would become now, read as a MedicationRequest
    posted to /fhir is (the edge fills in the participants it does not name)."""
    problems: list[Issue] = []
    request, missing = order_as_dispense(order, now, drug, problems)
    return HookOrder(reference, resource, request, missing, problems)
