"""Reading a Bundle as senders make them (docs/contracts.md §5): its entries and their requests
(a transaction or batch) or their resources alone (a collection or message, each entry an upsert
of its id, else a create), the references between entries (`urn:uuid:…`, `Type/id`), what an
entry falls back on when it lacks a date or specimen, and where in the Bundle an entry's problem
lies."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from gateway.fhir.http import FhirError
from gateway.fhir.resource_types import ON_THEIR_OWN, TAKEN_IN_BUNDLES
from mappings.fhir.references import token

OBSERVATION = "Observation"
REPORT = "DiagnosticReport"
PATIENT = "Patient"
SPECIMEN = "Specimen"
WITH_REQUEST = ("transaction", "batch")


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
    def keys(self) -> frozenset[str]:
        """The references that name this entry: its fullUrl, and Type/id for an update."""
        keys = {self.full_url} if self.full_url else set()
        if self.resource_id:
            keys.add(f"{self.resource_type}/{self.resource_id}")
        return frozenset(keys)


# --- reading the Bundle -----------------------------------------------------------------------


def bundle_kind(data: dict[str, Any], kinds: tuple[str, ...]) -> str:
    if data.get("resourceType") != "Bundle":
        raise FhirError(400, "invalid", "a Bundle is expected here", ("resourceType",))
    kind = data.get("type")
    if kind not in kinds:
        raise FhirError(
            400,
            "not-supported",
            f"Bundle.type must be {' or '.join(kinds)} here",
            ("Bundle.type",),
        )
    return str(kind)


def bundle_entries(data: dict[str, Any], kind: str) -> list[Entry | FhirError]:
    """The Bundle's entries (an entry that cannot be read is its error)."""
    raw = data.get("entry") or []
    if not isinstance(raw, list):
        raise FhirError(400, "structure", "Bundle.entry must be a list", ("Bundle.entry",))
    read = _requested if kind in WITH_REQUEST else _upserted
    return [_checked(read(n, item)) for n, item in enumerate(raw)]


def _requested(index: int, item: Any) -> Entry | FhirError:
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
    for condition in ("ifNoneExist", "ifMatch"):
        if not isinstance(request.get(condition), str | None):
            return FhirError(
                400, "structure", f"{condition} must be a string", (f"{where}.request.{condition}",)
            )
    method = str(request.get("method", "")).upper()
    resource_type, resource_id = _target(request["url"])
    if method not in ("POST", "PUT") or (method == "PUT") != bool(resource_id):
        return FhirError(
            400,
            "not-supported",
            f"entry {index}: {method} {request['url']} is not supported in a Bundle "
            "(POST <Type> and PUT <Type>/<id> are)",
            (f"{where}.request",),
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


def _upserted(index: int, item: Any) -> Entry | FhirError:
    """An entry of a collection or message: an upsert of its resource's id, else a create."""
    resource = item.get("resource") if isinstance(item, dict) else None
    if not isinstance(resource, dict):
        where = f"Bundle.entry[{index}].resource"
        return FhirError(400, "required", f"entry {index}: needs a resource", (where,))
    resource_id = resource.get("id") if isinstance(resource.get("id"), str) else None
    method = "PUT" if resource_id else "POST"
    resource_type = str(resource.get("resourceType", ""))
    return Entry(index, method, resource_type, resource_id, item.get("fullUrl"), resource)


def _checked(entry: Entry | FhirError) -> Entry | FhirError:
    """The entry's type is a FHIR type taken in a Bundle, and its resource is one of it."""
    if isinstance(entry, FhirError):
        return entry
    where, index = entry.where, entry.index
    if (endpoint := ON_THEIR_OWN.get(entry.resource_type)) is not None:
        text = f"entry {index}: a {entry.resource_type} is taken only as {endpoint}"
        return FhirError(400, "not-supported", text, (f"{where}.request",))
    if entry.resource_type not in TAKEN_IN_BUNDLES:
        text = f"entry {index}: {entry.resource_type or 'the url'} names no FHIR resource type"
        return FhirError(400, "not-supported", text, (f"{where}.request",))
    if entry.resource.get("resourceType") != entry.resource_type:
        text = f"entry {index}: the resource is not a {entry.resource_type}"
        return FhirError(400, "invalid", text, (f"{where}.resource.resourceType",))
    if entry.resource_id and entry.resource.get("id") != entry.resource_id:
        text = f"entry {index}: the resource's id must be the url's"
        return FhirError(400, "invalid", text, (f"{where}.resource.id",))
    return entry


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
        text = issue.diagnostics
        if not text.startswith(f"entry {entry.index}"):
            text = f"entry {entry.index}: {text}".rstrip(": ")
        issues.append(replace(issue, diagnostics=text, expression=expression))
    return FhirError(error.status, "", "", issues=issues)


def _placed(entry: Entry, expression: str) -> str:
    if expression.startswith("Bundle."):
        return expression
    inside = expression.removeprefix(entry.resource_type).lstrip(".")
    return f"{entry.where}.resource" + (f".{inside}" if inside else "")


# --- references between entries ------------------------------------------------------------


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


def unresolved(entry: Entry, known: set[str]) -> FhirError | None:
    """A `urn:` reference that names no entry this Bundle stores."""
    for reference in references(entry.resource):
        if reference.startswith("urn:") and reference not in known:
            return FhirError(
                400,
                "not-found",
                f"entry {entry.index}: {reference} names no stored entry",
                (f"{entry.where}.resource",),
            )
    return None


def references(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "reference" and isinstance(v, str):
                yield v
            else:
                yield from references(v)
    elif isinstance(value, list):
        for v in value:
            yield from references(v)


# --- what an Observation falls back on ------------------------------------------------------


@dataclass(frozen=True)
class Fallback:
    """For an Observation of the Bundle that carries none: the specimen (its Specimen entry's
    identifier, else its DiagnosticReport's) and the draw time (its DiagnosticReport's
    `effective[x]`, else its Specimen's `collection.collected[x]`) — docs/contracts.md §5."""

    specimen: str | None = None
    effective: Any = None  # a FHIR dateTime or Period, as sent


def fallbacks(entries: list[Entry]) -> dict[int, Fallback]:
    by_key = {key: entry for entry in entries for key in entry.keys}
    reports: dict[int, Entry] = {}
    for report in (e for e in entries if e.resource_type == REPORT):
        for reference in _results(report.resource):
            if (listed := by_key.get(reference)) is not None:
                reports.setdefault(listed.index, report)
    found: dict[int, Fallback] = {}
    for entry in (e for e in entries if e.resource_type == OBSERVATION):
        report = reports.get(entry.index)
        specimen = _specimen_entry(entry, by_key)
        found[entry.index] = Fallback(
            _identifier_text(specimen) or _identifier_text(report),
            _effective(report) or _collected(specimen),
        )
    return found


def _specimen_entry(entry: Entry, by_key: dict[str, Entry]) -> Entry | None:
    specimen = entry.resource.get("specimen")
    reference = specimen.get("reference") if isinstance(specimen, dict) else None
    target = by_key.get(reference) if isinstance(reference, str) else None
    return target if target is not None and target.resource_type == SPECIMEN else None


def _identifier_text(entry: Entry | None) -> str | None:
    if entry is None:
        return None
    resource = entry.resource
    identifiers = resource.get("identifier")
    candidates = list(identifiers) if isinstance(identifiers, list) else []
    candidates.append(resource.get("accessionIdentifier"))
    for identifier in candidates:
        if isinstance(identifier, dict) and identifier.get("value"):
            return token(identifier.get("system"), identifier["value"])
    return None


def _effective(report: Entry | None) -> Any:
    if report is None:
        return None
    return _moment(report.resource, "effective")


def _collected(specimen: Entry | None) -> Any:
    collection = specimen.resource.get("collection") if specimen is not None else None
    return _moment(collection, "collected") if isinstance(collection, dict) else None


def _moment(element: dict[str, Any], name: str) -> Any:
    """`<name>DateTime` as sent, or `<name>Period` as ``{"start": …}``."""
    if isinstance(element.get(f"{name}DateTime"), str):
        return element[f"{name}DateTime"]
    period = element.get(f"{name}Period")
    return period if isinstance(period, dict) and period.get("start") else None


def _results(report: dict[str, Any]) -> list[str]:
    results = report.get("result")
    items = results if isinstance(results, list) else []
    return [
        r["reference"] for r in items if isinstance(r, dict) and isinstance(r.get("reference"), str)
    ]
