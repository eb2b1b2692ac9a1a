"""Prefetched Observations read before (docs/contracts.md §6): an EHR sends a patient's recent
results with every hook call, and reading one — R4B validation and the lab mapping — costs more
than the rest of the check. The same resource (the same JSON) reads the same, so its reading is
kept, by its content, for the next call."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from rems_core.model import LabResult

MISSING = object()


class LabReadings:
    """The last ``size`` Observations read, by content: their lab result (None: not one the REMS
    reads, or not valid R4)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._read: OrderedDict[str, LabResult | None] = OrderedDict()
        self._lock = threading.Lock()

    def reading(
        self, resource: dict[str, Any], read: Callable[[dict[str, Any]], LabResult | None]
    ) -> LabResult | None:
        key = json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        with self._lock:
            found = self._read.get(key, MISSING)
            if found is not MISSING:
                self._read.move_to_end(key)
                return found  # type: ignore[return-value]
        result = read(resource)
        with self._lock:
            self._read[key] = result
            if len(self._read) > self.size:
                self._read.popitem(last=False)
        return result
