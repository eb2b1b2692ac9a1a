"""Who is calling the FHIR endpoint, and may they do this (SMART scopes).

Every FHIR route depends on ``requires(type, interaction)``. The app's authenticator decides who
the caller is: SMART Backend Services tokens in production, or the development mode, which lets
everyone in as a system client (it binds to loopback only and says so loudly at start-up).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import Depends, Request

from gateway.fhir.http import FhirError
from gateway.fhir.scopes import ResourceScope, resource_scope

INTERACTION_LETTERS = {"create": "c", "read": "r", "update": "u", "delete": "d", "search": "s"}
ADMIN_SCOPE = "admin"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a system client, or a user (``fhir_user``) such as a prescriber."""

    client_id: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    fhir_user: str | None = None  # e.g. "Practitioner/1234567893" (the prescriber's NPI)

    def allows(self, resource_type: str, interaction: str) -> bool:
        letter = INTERACTION_LETTERS[interaction]
        return any(_grants(scope, resource_type, letter) for scope in self.scopes)

    @property
    def prescriber_npi(self) -> str | None:
        """The NPI of a prescriber signed in as a user; None for system clients."""
        if self.fhir_user and self.fhir_user.startswith("Practitioner/"):
            return self.fhir_user.removeprefix("Practitioner/")
        return None


def _grants(scope: str, resource_type: str, letter: str) -> bool:
    """A system or user scope (SMART v2 or v1, see scopes.py) covering this interaction."""
    granted = resource_scope(scope)
    return granted is not None and any(
        granted.covers(ResourceScope(context, resource_type, letter))
        for context in ("system", "user")
    )


class Authenticator(Protocol):
    async def principal(self, request: Request) -> Principal:
        """The caller, or FhirError 401."""
        ...


class DevelopmentAuth:
    """Everyone is a system client with every scope (no signing: a system client cannot sign)."""

    PRINCIPAL = Principal("development", frozenset({"system/*.*", ADMIN_SCOPE}))

    async def principal(self, request: Request) -> Principal:
        return self.PRINCIPAL


def requires(resource_type: str, interaction: str) -> Any:
    """A route dependency: the caller, who must hold a scope for this interaction."""

    async def dependency(request: Request) -> Principal:
        authenticator: Authenticator = request.app.state.fhir_auth
        principal = await authenticator.principal(request)
        if not principal.allows(resource_type, interaction):
            scope = f"system/{resource_type}.{INTERACTION_LETTERS[interaction]}"
            raise FhirError(403, "forbidden", f"this token does not grant {scope}")
        return principal

    checker: Callable[[Request], Awaitable[Principal]] = dependency
    return Depends(checker)
