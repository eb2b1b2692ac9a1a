"""The periodic side of §8: scheduled work up to "now", every few minutes, inside `serve`.

APScheduler 3 runs the job on the event loop; the work itself is one unit of work for the single
writer, and finds nothing new when it runs twice for the same time (restart-safe). With
``--clock message`` there is no "now" to run up to: scheduled work then runs only when asked
(``POST /admin/scheduled-work``, the scenario runner's ``advance_to``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from gateway.service import RemsService

log = logging.getLogger("rems_gateway.scheduler")


async def run_due_work(service: RemsService) -> None:
    found = await service.run_scheduled(datetime.now(UTC))
    flagged = sum(1 for findings in found.values() if findings)
    log.info("scheduled work done", extra={"patients": len(found), "flagged": flagged})


def start_scheduler(service: RemsService, every_minutes: int) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.add_job(
        run_due_work,
        "interval",
        minutes=every_minutes,
        args=[service],
        id="monitoring",
        coalesce=True,  # after a pause, run once, not once per missed interval
        max_instances=1,
        next_run_time=datetime.now(UTC),  # once at start-up: catch up after a restart
    )
    scheduler.start()
    return scheduler
