"""SMART scopes as data: what a client may ask for, and what it gets (requested ∩ allowed).

SMART v2 `system/Observation.cs` and v1 `system/Observation.read|write|*` are understood;
`read` is `rs`, `write` is `cud`, `*` is `cruds`. Other scopes (`admin`) are plain names granted
only when allowed verbatim.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

LETTERS = "cruds"
V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": LETTERS}
_RESOURCE_SCOPE = re.compile(r"^(system|user|patient)/(\*|[A-Z][A-Za-z]{0,63})\.([a-z*]+)$")
_PLAIN_SCOPE = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")


@dataclass(frozen=True)
class ResourceScope:
    context: str
    resource_type: str  # a FHIR type, or "*"
    letters: str  # a subsequence of "cruds"

    @property
    def text(self) -> str:
        return f"{self.context}/{self.resource_type}.{self.letters}"

    def covers(self, other: ResourceScope) -> bool:
        return (
            self.context == other.context
            and self.resource_type in ("*", other.resource_type)
            and set(other.letters) <= set(self.letters)
        )

    def overlap(self, other: ResourceScope) -> ResourceScope | None:
        types = {self.resource_type, other.resource_type}
        if self.context != other.context or (len(types) > 1 and "*" not in types):
            return None
        resource_type = other.resource_type if self.resource_type == "*" else self.resource_type
        letters = "".join(c for c in LETTERS if c in self.letters and c in other.letters)
        return ResourceScope(self.context, resource_type, letters) if letters else None


def resource_scope(scope: str) -> ResourceScope | None:
    """`system/Observation.cs` (or v1 `.read|.write|.*`) parsed; None for anything else."""
    found = _RESOURCE_SCOPE.match(scope)
    if found is None:
        return None
    context, resource_type, permissions = found.groups()
    letters = V1_PERMISSIONS.get(permissions, permissions)
    if not _is_letters(letters):
        return None
    return ResourceScope(context, resource_type, letters)


def _is_letters(letters: str) -> bool:
    """Letters of "cruds", each at most once and in that order (SMART v2)."""
    position = -1
    for letter in letters:
        found = LETTERS.find(letter)
        if found <= position:
            return False
        position = found
    return bool(letters)


def valid_scope(scope: str) -> bool:
    return resource_scope(scope) is not None or bool(_PLAIN_SCOPE.match(scope))


def granted_scopes(requested: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """Requested ∩ allowed, in the order asked. A requested scope an allowed one covers is
    granted as asked; a broader one (`system/*.cruds`) is narrowed to its overlap with what is
    allowed, written SMART v2 style. Unknown and unallowed scopes are dropped."""
    allowed = list(allowed)
    allowed_resources = [s for s in map(resource_scope, allowed) if s is not None]
    granted: list[str] = []
    for scope in requested:
        wanted = resource_scope(scope)
        if wanted is None:
            found = [scope] if scope in allowed else []
        elif any(a.covers(wanted) for a in allowed_resources):
            found = [scope]
        else:
            overlaps = (wanted.overlap(a) for a in allowed_resources)
            found = [o.text for o in overlaps if o is not None]
        granted += [s for s in found if s not in granted]
    return granted
