"""The FHIR endpoint's routes under /fhir, and what the CapabilityStatement declares of them."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.fhir import capability, observations

capability.declare(
    "Observation",
    ["create", "update", "read", "vread", "search-type"],
    search=("patient", "subject", "code", "date"),
    conditional_create=True,
)


def fhir_router() -> APIRouter:
    router = APIRouter(prefix="/fhir")
    router.include_router(capability.router)
    router.include_router(observations.router)
    return router
