"""One gateway process of a race test: its own engine, writer and service on a shared database.

    python -m tests.race_worker DB_URL overrides|same-request|other-body COUNT TAG

Prints "ready" once it has imported and assembled, waits for a line on stdin (the race's start,
given to every worker at once), then prints one JSON line: the outcomes and RDA numbers (or
errors) of COUNT concurrent requests.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from gateway.app.bootstrap import assemble
from gateway.app.errors import RequestConflict
from gateway.app.service import RemsService
from gateway.app.values import Source
from rems_core.model import Override, ReportedAnc
from rems_core.store.db import make_engine
from tests.builders import PRESCRIBER, at, dispense
from tests.test_service import MRN

OVERRIDE = Override(PRESCRIBER, ReportedAnc("2000", "/uL", at("2022-03-01")), "PSF on its way")


def request(mode: str, n: int) -> Any:
    if mode == "overrides":
        return dispense("2022-03-02", override=OVERRIDE, request_id=f"{sys.argv[4]}-{n}")
    days = 14 if mode == "other-body" else 30
    return dispense("2022-03-02", request_id="shared-request", days_supply=days)


async def one(service: RemsService, mode: str, n: int) -> dict[str, Any]:
    try:
        decision = await service.decide_dispense(MRN, request(mode, n), Source("race", f"p{n}"))
    except RequestConflict:
        return {"error": "conflict"}
    return {"outcome": decision.outcome.value, "rda": decision.rda.number if decision.rda else None}


async def main(url: str, mode: str, count: int) -> list[dict[str, Any]]:
    engine = make_engine(url)
    # small batches: more interleaving with the other process
    application = assemble(engine, max_batch=4)
    print("ready", flush=True)
    sys.stdin.readline()  # the start: both processes go together
    try:
        service = application.service
        return list(await asyncio.gather(*(one(service, mode, n) for n in range(count))))
    finally:
        application.writer.stop()
        engine.dispose()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))))
