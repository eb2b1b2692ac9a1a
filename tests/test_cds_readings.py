"""A hook's prefetched Observations are read once per content (gateway/cds/readings.py)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.cds.readings import Readings
from rems_core.model import LabResult
from tests.builders import at

RESULT = LabResult("751-8", "2.1", "10*3/uL", at("2022-03-01"))


def test_the_same_content_is_read_once_and_the_oldest_is_forgotten() -> None:
    readings = Readings(size=2)
    read: list[dict[str, Any]] = []

    def reader(resource: dict[str, Any]) -> LabResult | None:
        read.append(resource)
        return RESULT if resource.get("status") == "final" else None

    first = {"resourceType": "Observation", "status": "final", "id": "a"}
    same_in_another_order = {"id": "a", "status": "final", "resourceType": "Observation"}
    assert readings.reading("lab", first, reader) is RESULT
    assert readings.reading("lab", same_in_another_order, reader) is RESULT
    assert len(read) == 1
    unread = {"resourceType": "Observation", "status": "registered", "id": "b"}
    assert readings.reading("lab", unread, reader) is None
    assert readings.reading("lab", unread, reader) is None  # "not one the REMS reads" is kept too
    assert len(read) == 2
    readings.reading("lab", {"resourceType": "Observation", "status": "final", "id": "c"}, reader)
    readings.reading("lab", first, reader)  # forgotten: b and c were read after it
    assert len(read) == 4


def test_a_resource_that_cannot_be_read_is_not_kept() -> None:
    readings = Readings()
    calls = []

    def refuse(resource: dict[str, Any]) -> None:
        calls.append(resource)
        raise ValueError("not valid R4")

    for _ in range(2):
        with pytest.raises(ValueError):
            readings.reading("patient", {"resourceType": "Patient"}, refuse)
    assert len(calls) == 2
