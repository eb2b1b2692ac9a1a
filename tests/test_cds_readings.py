"""A hook's prefetched Observations are read once per content (gateway/cds/readings.py)."""

from __future__ import annotations

from typing import Any

from gateway.cds.readings import LabReadings
from rems_core.model import LabResult
from tests.builders import at

RESULT = LabResult("751-8", "2.1", "10*3/uL", at("2022-03-01"))


def test_the_same_content_is_read_once_and_the_oldest_is_forgotten() -> None:
    readings = LabReadings(size=2)
    read: list[dict[str, Any]] = []

    def reader(resource: dict[str, Any]) -> LabResult | None:
        read.append(resource)
        return RESULT if resource.get("status") == "final" else None

    first = {"resourceType": "Observation", "status": "final", "id": "a"}
    same_in_another_order = {"id": "a", "status": "final", "resourceType": "Observation"}
    assert readings.reading(first, reader) is RESULT
    assert readings.reading(same_in_another_order, reader) is RESULT
    assert len(read) == 1
    unread = {"resourceType": "Observation", "status": "registered", "id": "b"}
    assert readings.reading(unread, reader) is None
    assert readings.reading(unread, reader) is None  # "not one the REMS reads" is kept too
    assert len(read) == 2
    readings.reading({"resourceType": "Observation", "status": "final", "id": "c"}, reader)
    readings.reading(first, reader)  # forgotten: b and c were read after it
    assert len(read) == 4
