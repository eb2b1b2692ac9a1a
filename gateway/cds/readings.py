"""Prefetched resources read before (docs/contracts.md §6): an EHR sends the patient, the user
and the recent results with every hook call, and reading one — R4B validation and the mapping —
costs more than the rest of the check. The same resource (the same JSON) reads the same, so its
reading is kept, by its content, for the next call; a resource that cannot be read raises each
time (nothing is kept of it)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

MISSING = object()


class Readings:
    """What the last ``size`` resources read to, by what they were read as and their content."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._read: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def reading(
        self, kind: str, resource: dict[str, Any], read: Callable[[dict[str, Any]], T]
    ) -> T:
        """``read(resource)``, or what it gave for the same ``kind`` and content before."""
        key = kind + json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
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
