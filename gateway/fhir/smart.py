"""SMART Backend Services (client_credentials with a signed JWT assertion).

Placeholder until the token endpoint lands: with no clients configured every FHIR request is
refused with 401, which is the safe default.
"""

from __future__ import annotations

from fastapi import Request

from gateway.config import Settings
from gateway.fhir.auth import Principal
from gateway.fhir.http import FhirError


class SmartBackendAuth:
    @classmethod
    def from_settings(cls, settings: Settings) -> SmartBackendAuth:
        return cls()

    async def principal(self, request: Request) -> Principal:
        raise FhirError(
            401,
            "login",
            "send a SMART Backend Services bearer token",
            headers={"WWW-Authenticate": 'Bearer realm="rems-gateway FHIR"'},
        )
