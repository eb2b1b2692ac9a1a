"""The CDS services the gateway offers (`GET /cds-services`) and their prefetch templates.

The templates ask for what the answer needs: the Patient (its identifiers find the registry
patient), the user's Practitioner (the prescriber's NPI when the order names none), the recent
neutrophil and WBC Observations, and — the discharge hook carries no orders — the encounter's
active MedicationRequests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

LAB_CODES = ("751-8", "26499-4", "753-4", "768-1", "6690-2", "770-8", "764-1", "26507-4")
LAB_QUERY = (
    "Observation?patient={{context.patientId}}&code="
    + ",".join(f"http://loinc.org|{code}" for code in LAB_CODES)
    + "&_sort=-date&_count=50"
)
PATIENT, PRACTITIONER, LABS, MEDICATIONS = "patient", "practitioner", "labs", "medications"
COMMON_PREFETCH = {
    PATIENT: "Patient/{{context.patientId}}",
    PRACTITIONER: "{{context.userId}}",
    LABS: LAB_QUERY,
}
DISCHARGE_MEDICATIONS = (
    "MedicationRequest?patient={{context.patientId}}&encounter={{context.encounterId}}"
    "&status=active"
)
_TOKEN = re.compile(r"\{\{\s*context\.([A-Za-z]+)\s*\}\}")


@dataclass(frozen=True)
class CdsService:
    id: str
    hook: str
    title: str
    description: str
    prefetch: dict[str, str]
    orders: bool  # whether the hook is about orders (draftOrders, or the discharge medications)

    def discovery(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": dict(self.prefetch),
            "usageRequirements": (
                "Send the prefetched Patient with its identifiers (the MRN the hospital's "
                "lab system sends), or a fhirServer the gateway is allowed to query."
            ),
        }


SERVICES: dict[str, CdsService] = {
    service.id: service
    for service in (
        CdsService(
            "clozapine-rems-order-select",
            "order-select",
            "Clozapine REMS: ANC and REMS status of the selected clozapine order",
            "Checks a selected clozapine order against the REMS rules (ANC, labs, PSF window, "
            "enrollment, certification) as a dispense would be; nothing is recorded.",
            COMMON_PREFETCH,
            orders=True,
        ),
        CdsService(
            "clozapine-rems-order-sign",
            "order-sign",
            "Clozapine REMS: would this clozapine order be dispensed?",
            "Decides every clozapine order being signed as the pharmacy's dispense would be "
            "decided (authorized, rationale required or denied), with the reasons and the next "
            "step; no RDA is issued and no override counted.",
            COMMON_PREFETCH,
            orders=True,
        ),
        CdsService(
            "clozapine-rems-encounter-discharge",
            "encounter-discharge",
            "Clozapine REMS: discharge supply",
            "Checks the encounter's clozapine discharge medications: the days supply an "
            "inpatient-only pharmacy may give at discharge, the ANC and the REMS status.",
            COMMON_PREFETCH | {MEDICATIONS: DISCHARGE_MEDICATIONS},
            orders=True,
        ),
        CdsService(
            "clozapine-rems-patient-view",
            "patient-view",
            "Clozapine REMS: monitoring state",
            "For a patient in the clozapine registry: the newest ANC, when the next one is due, "
            "when the PSF window closes and what waits for a signature.",
            COMMON_PREFETCH,
            orders=False,
        ),
    )
}


def discovery() -> dict[str, Any]:
    return {"services": [service.discovery() for service in SERVICES.values()]}


def filled(template: str, context: dict[str, Any]) -> str | None:
    """A prefetch template with its `{{context.x}}` tokens filled (None: a token names nothing
    in the context, so the query cannot be made)."""
    missing = False

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        found = context.get(match.group(1))
        if not isinstance(found, str) or not found:
            missing = True
            return ""
        return found

    query = _TOKEN.sub(value, template)
    return None if missing else query
