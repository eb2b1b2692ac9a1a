"""What a unit of work may use besides the store: the rule packs and which of them apply, the
site time zone, a source of ids and the clock. Units get this context, never the service, and no
unit reads the wall clock itself (replays and tests set ``now``)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Protocol

from rems_core.monitoring import local_date
from rems_core.rulepack import AUTO, DEFAULT_PACK, PackLibrary, RulePack


class IdSource(Protocol):
    def new_id(self, prefix: str) -> str: ...

    def rda_number(self) -> str: ...


class RandomIds:
    """Ids and RDA numbers: unique and not guessable. The operating system's random bytes are
    read a page at a time (one system call per ~500 ids, not one per id)."""

    def __init__(self) -> None:
        self._pool = b""
        self._taken = 0
        self._lock = threading.Lock()

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{self._random_hex(8)}"

    def rda_number(self) -> str:
        return "RDA-" + self._random_hex(6).upper()

    def _random_hex(self, size: int) -> str:
        with self._lock:
            if self._taken + size > len(self._pool):
                self._pool, self._taken = os.urandom(4096), 0
            start, self._taken = self._taken, self._taken + size
            return self._pool[start : self._taken].hex()


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class UnitContext:
    packs: PackLibrary = field(default_factory=PackLibrary)
    rules: str = DEFAULT_PACK  # a pack id, or "auto"
    tz: tzinfo = UTC
    ids: IdSource = field(default_factory=RandomIds)
    now: Callable[[], datetime] = utc_now  # the recording time of what the units store
    # how long results of no registry patient are kept for review (review_retention_days)
    review_retention: timedelta = timedelta(days=30)

    def pack_for(self, moment: datetime) -> RulePack:
        """The pack for an event's clinical time (raises OutOfScope before the program)."""
        return self.packs.for_date(self.rules, local_date(moment, self.tz))

    def lab_pack(self) -> RulePack:
        # A lab's category and thresholds are the same in every pack (docs/rules.md §0).
        return self.packs.get(DEFAULT_PACK if self.rules == AUTO else self.rules)
