"""Mutations of valid FHIR resources, for the bounded test in the suite (test_fhir_mutations.py)
and the longer manual run (tests/fuzz/fhir_mutations.py): drop, duplicate or retype an element,
contain a resource of no known type, nest deeply, put huge numbers, NUL and odd unicode where values were."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
from hypothesis import strategies as st

FIXTURES = Path(__file__).parent.parent / "fixtures" / "fhir"
FHIR = "application/fhir+json"

#: Where each fixture goes: its create and its $validate.
ENDPOINTS = {
    "Observation": ["/fhir/Observation", "/fhir/Observation/$validate"],
    "MedicationRequest": ["/fhir/MedicationRequest", "/fhir/MedicationRequest/$validate"],
    "QuestionnaireResponse": [
        "/fhir/QuestionnaireResponse",
        "/fhir/QuestionnaireResponse/$validate",
    ],
    "Bundle": ["/fhir", "/fhir/Bundle", "/fhir/$process-message", "/fhir/Bundle/$validate"],
    "Parameters": ["/fhir/GuidanceResponse/$rems-etasu"],
}


def fixtures() -> list[dict[str, Any]]:
    found = [json.loads(path.read_text()) for path in sorted(FIXTURES.glob("*.json"))]
    return [body for body in found if body.get("resourceType") in ENDPOINTS]


def nested(depth: int) -> Any:
    value: Any = "x"
    for level in range(depth):
        value = [value] if level % 2 else {"a": value}
    return value


ODD_VALUES = st.one_of(
    st.sampled_from(
        [
            None,
            True,
            0,
            -1,
            10**30,
            -(10**30),
            1e308,
            1e-320,
            "",
            "\x00",
            "a\x00b",
            "\u202eevil",
            "😀" * 50,
            "\ud800",
            "x" * 10_000,
            [],
            {},
            [None],
            {"resourceType": "NoSuchType"},
        ]
    ).map(copy.deepcopy),  # a fresh [] or {} each time: a later mutation may change it in place
    st.sampled_from([70, 1_000, 1_200]).map(nested),
    st.text(max_size=30),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
)


CONTAINED = {"resourceType": "NoSuchType", "id": "x"}


MAX_PATH = 40  # deeper elements (a nesting put there by an earlier mutation) are not listed


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every element's path (keys and list indexes), the root excluded, to MAX_PATH deep: the
    walk must not depend on how much stack is left (hypothesis replays at other depths)."""
    found: list[tuple[Any, ...]] = []
    if len(prefix) >= MAX_PATH:
        return found
    if isinstance(value, dict):
        children: Any = value.items()
    elif isinstance(value, list):
        children = enumerate(value)
    else:
        return found
    for key, child in children:
        found.append((*prefix, key))
        found += paths(child, (*prefix, key))
    return found


def _parent(body: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        body = body[key]
    return body


def mutate(body: dict[str, Any], path: tuple[Any, ...], how: str, value: Any) -> None:
    parent, key = _parent(body, path), path[-1]
    if how == "drop":
        del parent[key]
    elif how == "duplicate" and isinstance(parent, list):  # the same object twice: a deep copy
        parent.insert(key, parent[key])  # of a nesting would hit the recursion limit
    elif how == "duplicate":
        parent[key] = [parent[key], parent[key]]
    elif how == "wrap":
        parent[key] = [parent[key]]
    elif how == "contain":  # a contained resource: of an odd type, or an odd value
        body["contained"] = [value if isinstance(value, dict) and value else dict(CONTAINED)]
    else:
        parent[key] = value


@st.composite
def mutated(draw: st.DrawFn, bodies: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """An endpoint and a fixture resource with one to three mutations."""
    body = copy.deepcopy(draw(st.sampled_from(bodies)))
    endpoint = draw(st.sampled_from(ENDPOINTS[body["resourceType"]]))
    for _ in range(draw(st.integers(1, 3))):
        where = paths(body)
        if not where:
            break
        path = draw(st.sampled_from(where))
        how = draw(st.sampled_from(["drop", "duplicate", "wrap", "retype", "retype", "contain"]))
        mutate(body, path, how, draw(ODD_VALUES))
    return endpoint, body


def check_answer(answer: httpx.Response) -> None:
    """No 5xx; every error an OperationOutcome; every answer with a body JSON."""
    assert answer.status_code < 500, answer.text[:500]
    if answer.status_code >= 400:
        assert answer.json()["resourceType"] == "OperationOutcome", answer.text[:500]
    elif answer.content:
        assert "resourceType" in answer.json()


def send(client: httpx.Client, endpoint: str, body: dict[str, Any]) -> httpx.Response:
    content = json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8", "surrogatepass")
    return client.post(endpoint, content=content, headers={"Content-Type": FHIR})
