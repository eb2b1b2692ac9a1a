"""Reading a transaction or batch Bundle: its entries and their requests, the references between
entries (`fullUrl`s such as `urn:uuid:…`), and where in the Bundle an entry's problem lies."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from gateway.app.values import Recorded
from gateway.fhir.http import FhirError
from mappings.fhir.references import token

OBSERVATION = "Observation"
REPORT = "DiagnosticReport"
PATIENT = "Patient"
SUPPORTED = {
    ("POST", OBSERVATION),
    ("PUT", OBSERVATION),
    ("POST", REPORT),
    ("POST", PATIENT),
    ("PUT", PATIENT),
}


@dataclass
class Entry:
    """One `Bundle.entry` with its request, as sent."""

    index: int
    method: str
    resource_type: str
    resource_id: str | None
    full_url: str | None
    resource: dict[str, Any]
    if_none_exist: str | None = None
    if_match: str | None = None

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"

    @property
    def keys(self) -> set[str]:
        """The references that name this entry: its fullUrl, and Type/id for an update."""
        keys = {self.full_url} if self.full_url else set()
        if self.resource_id:
            keys.add(f"{self.resource_type}/{self.resource_id}")
        return keys


# --- reading the Bundle -----------------------------------------------------------------------


def bundle_entries(data: dict[str, Any]) -> tuple[str, list[Entry | FhirError]]:
    """The Bundle's type and its entries (an entry that cannot be read is its error)."""
    if data.get("resourceType") != "Bundle":
        raise FhirError(400, "invalid", "POST [base] takes a Bundle", ("resourceType",))
    kind = data.get("type")
    if kind not in ("transaction", "batch"):
        raise FhirError(
            400, "not-supported", "Bundle.type must be transaction or batch", ("Bundle.type",)
        )
    raw = data.get("entry") or []
    if not isinstance(raw, list):
        raise FhirError(400, "structure", "Bundle.entry must be a list", ("Bundle.entry",))
    return kind, [_entry(n, item) for n, item in enumerate(raw)]


def _entry(index: int, item: Any) -> Entry | FhirError:
    where = f"Bundle.entry[{index}]"
    request = item.get("request") if isinstance(item, dict) else None
    resource = item.get("resource") if isinstance(item, dict) else None
    if not isinstance(request, dict) or not isinstance(request.get("url"), str):
        return FhirError(
            400,
            "required",
            f"entry {index}: needs request.method and request.url",
            (f"{where}.request",),
        )
    if not isinstance(resource, dict):
        return FhirError(
            400, "required", f"entry {index}: needs a resource", (f"{where}.resource",)
        )
    method = str(request.get("method", "")).upper()
    resource_type, resource_id = _target(request["url"])
    if (method, resource_type) not in SUPPORTED or (method == "PUT") != bool(resource_id):
        return FhirError(
            400,
            "not-supported",
            f"entry {index}: {method} {resource_type or request['url']} is not supported in a "
            "Bundle (POST Observation, PUT Observation/[id], POST DiagnosticReport, "
            "POST Patient, PUT Patient/[id])",
            (f"{where}.request",),
        )
    if resource.get("resourceType") != resource_type:
        return FhirError(
            400,
            "invalid",
            f"entry {index}: the resource is not a {resource_type}",
            (f"{where}.resource.resourceType",),
        )
    if resource_id and resource.get("id") != resource_id:
        return FhirError(
            400,
            "invalid",
            f"entry {index}: the resource's id must be the url's",
            (f"{where}.resource.id",),
        )
    for condition in ("ifNoneExist", "ifMatch"):
        if not isinstance(request.get(condition), str | None):
            return FhirError(
                400, "structure", f"{condition} must be a string", (f"{where}.request.{condition}",)
            )
    return Entry(
        index,
        method,
        resource_type,
        resource_id,
        item.get("fullUrl"),
        resource,
        request.get("ifNoneExist"),
        request.get("ifMatch"),
    )


def _target(url: str) -> tuple[str, str | None]:
    """`Observation`, `Observation/123` or an absolute URL of either → (type, id)."""
    parts = [p for p in urlsplit(url).path.split("/") if p]
    if len(parts) >= 2 and parts[-2][:1].isupper():
        return parts[-2], parts[-1]
    return (parts[-1], None) if parts else ("", None)


def in_entry(entry: Entry, error: FhirError) -> FhirError:
    """An entry's error, its issues placed in the Bundle (`Bundle.entry[2].resource.subject`)."""
    issues = []
    for issue in error.issues:
        expression = tuple(_placed(entry, e) for e in issue.expression)
        text = f"entry {entry.index}: {issue.diagnostics}".rstrip(": ")
        issues.append(replace(issue, diagnostics=text, expression=expression))
    return FhirError(error.status, "", "", issues=issues)


def _placed(entry: Entry, expression: str) -> str:
    if expression.startswith("Bundle."):
        return expression
    inside = expression.removeprefix(entry.resource_type).lstrip(".")
    return f"{entry.where}.resource" + (f".{inside}" if inside else "")


def specimen_fallbacks(entries: list[Entry]) -> dict[str, str]:
    """Entry reference → the identifier of the DiagnosticReport that lists it among its results:
    the specimen of an Observation that names none (docs/contracts.md §5)."""
    fallbacks: dict[str, str] = {}
    for entry in entries:
        if entry.resource_type != REPORT:
            continue
        identifier = _identifier_text(entry.resource.get("identifier"))
        for reference in _results(entry.resource):
            if identifier:
                fallbacks.setdefault(reference, identifier)
    return fallbacks


def _identifier_text(identifiers: Any) -> str | None:
    for identifier in identifiers if isinstance(identifiers, list) else []:
        if isinstance(identifier, dict) and identifier.get("value"):
            return token(identifier.get("system"), identifier["value"])
    return None


def _results(report: dict[str, Any]) -> list[str]:
    results = report.get("result")
    items = results if isinstance(results, list) else []
    return [
        r["reference"] for r in items if isinstance(r, dict) and isinstance(r.get("reference"), str)
    ]


def resolved(value: Any, ids: dict[str, str]) -> Any:
    """``value`` with every `reference` to an entry of the Bundle rewritten to its stored id."""
    if isinstance(value, dict):
        return {
            k: ids.get(v, v) if k == "reference" and isinstance(v, str) else resolved(v, ids)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [resolved(v, ids) for v in value]
    return value


def stored_ids(entries: list[Entry], recorded: list[Recorded]) -> dict[str, str]:
    return {
        key: f"{done.resource.resource_type}/{done.resource.id}"
        for entry, done in zip(entries, recorded, strict=True)
        for key in entry.keys
    }


def unresolved(entry: Entry, known: set[str]) -> FhirError | None:
    """A `urn:` reference that names no entry this Bundle stores."""
    for reference in _references(entry.resource):
        if reference.startswith("urn:") and reference not in known:
            return FhirError(
                400,
                "not-found",
                f"entry {entry.index}: {reference} names no stored entry",
                (f"{entry.where}.resource",),
            )
    return None


def _references(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "reference" and isinstance(v, str):
                yield v
            else:
                yield from _references(v)
    elif isinstance(value, list):
        for v in value:
            yield from _references(v)
