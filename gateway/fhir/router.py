"""The FHIR endpoint's routes under /fhir, and what the CapabilityStatement declares of them."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.fhir import (
    bundles,
    capability,
    diagnostic_reports,
    etasu,
    lookup,
    medication_dispenses,
    medication_requests,
    messaging,
    observations,
    patients,
    questionnaires,
    stored,
    subscriptions,
    tasks,
    validate,
)

capability.declare(
    "Observation",
    ["create", "update", "read", "vread", "search-type"],
    search=observations.LAB_SEARCH,
    conditional_create=True,
)

# Bundles as senders make them (docs/contracts.md §5): gateway/fhir/{bundles,messaging}.py
capability.declare("Bundle", ["create", "read", "vread"])
capability.declare_system(interactions=("transaction", "batch"))


# Dispense decisions and the RDA's life (docs/rules.md §6):
# gateway/fhir/{medication_requests,medication_dispenses,etasu,patients}.py
capability.declare("MedicationRequest", ["create", "update", "read", "vread"])
capability.declare("MedicationDispense", ["create", "read", "vread"])
capability.declare(
    "GuidanceResponse",
    ["read"],  # a recorded decision, by its id
    operations=(("rems-etasu", "urn:rems-gateway:fhir:OperationDefinition/rems-etasu"),),
)
capability.declare(
    "Patient",
    ["read", "search-type"],
    search=patients.SEARCH,
    operations=(("rems-status", "urn:rems-gateway:fhir:OperationDefinition/rems-status"),),
)


# Notifications (docs/contracts.md §7): gateway/fhir/subscriptions.py declares Subscription.


# The Patient Status Form (docs/rules.md §4–5): gateway/fhir/questionnaires.py
capability.declare(
    "Questionnaire", ["read", "search-type"], search=questionnaires.QUESTIONNAIRE_SEARCH
)
capability.declare(
    "QuestionnaireResponse",
    ["create", "update", "read", "vread", "search-type"],
    search=questionnaires.RESPONSE_SEARCH,
    operations=(
        ("submit", "urn:rems-gateway:fhir:OperationDefinition/QuestionnaireResponse-submit"),
        ("sign", "urn:rems-gateway:fhir:OperationDefinition/QuestionnaireResponse-sign"),
    ),
)


# The worklist (docs/contracts.md §7): gateway/fhir/tasks.py; drafts are QuestionnaireResponses
capability.declare("Task", ["read", "vread", "search-type"], search=tasks.SEARCH)


# The certification lookup and the shipment check (docs/rules.md §10): gateway/fhir/lookup.py
capability.declare(
    "Organization",
    ["read", "search-type"],
    search=lookup.ORGANIZATION_SEARCH,
    operations=(("rems-ship-check", lookup.SHIP_CHECK),),
)
capability.declare("Practitioner", ["read", "search-type"], search=lookup.PRACTITIONER_SEARCH)
capability.declare("PractitionerRole", ["read", "search-type"], search=lookup.ROLE_SEARCH)


def fhir_router() -> APIRouter:
    router = APIRouter(prefix="/fhir")
    router.include_router(capability.router)
    typed = (
        observations,
        diagnostic_reports,
        medication_requests,
        medication_dispenses,
        etasu,
        patients,
        questionnaires,
        tasks,
        subscriptions,
        lookup,
    )
    for resource_routes in typed:
        router.include_router(resource_routes.router)
    bundles.include(router)  # POST /fhir and /fhir/Bundle
    router.include_router(messaging.router)
    router.include_router(validate.router)
    router.include_router(stored.router)  # /{type}: after every type's own routes
    validate.declare_operations()  # after every type is declared
    return router
