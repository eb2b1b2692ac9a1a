"""References from hospital systems (docs/contracts.md §5): patients by identifier or by the
gateway's own `Patient/{id}`; prescribers and pharmacies by NPI, logical or contained."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rems_core.model import Identifier

NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"


@dataclass(frozen=True)
class SubjectRef:
    """Who a resource is about: registry identifiers, or the gateway's own patient id."""

    identifiers: tuple[Identifier, ...] = ()
    patient_id: str | None = None


def subject_ref(reference: Any) -> SubjectRef | None:
    """A Reference (model or None) → SubjectRef; None when it names nobody we can match."""
    if reference is None:
        return None
    literal = getattr(reference, "reference", None)
    if literal:
        kind, _, rest = literal.rpartition("/")
        if kind.endswith("Patient") and rest and "/_history" not in literal:
            return SubjectRef(patient_id=rest)
        return None
    identifier = getattr(reference, "identifier", None)
    if identifier is not None and identifier.value:
        # without a system it matches nobody (a result is held for review, not refused)
        return SubjectRef(identifiers=(Identifier(identifier.system or "", identifier.value),))
    return None


def npi_of(reference: Any, contained: list[Any] | None = None) -> str | None:
    """The NPI of a Practitioner or Organization reference: a logical identifier, or a contained
    resource (`#id`) carrying one."""
    if reference is None:
        return None
    identifier = getattr(reference, "identifier", None)
    if identifier is not None and identifier.system == NPI_SYSTEM and identifier.value:
        return str(identifier.value)
    literal = getattr(reference, "reference", None) or ""
    if literal.startswith("#"):
        for resource in contained or []:
            if getattr(resource, "id", None) == literal[1:]:
                for held in getattr(resource, "identifier", None) or []:
                    if held.system == NPI_SYSTEM and held.value:
                        return str(held.value)
    return None


def token(system: str | None, value: Any) -> str:
    """An identifier as FHIR's token text, ``system|value`` (``|value`` without a system): the
    key the gateway files identifiers by."""
    return f"{system or ''}|{value}"


def identifier_key(identifiers: list[Any] | None) -> str | None:
    """The first business identifier as a token (conditional create, re-sends)."""
    for identifier in identifiers or []:
        if identifier.value:
            return token(identifier.system, identifier.value)
    return None
