"""A review item as the operator reads it (`GET /admin/review`, `rems-gateway review`): identifier
values masked unless the operator asks to see them, and a warning before the retention ends."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from rems_core.identity import mask

#: An item this close to its purge is flagged in every listing.
EXPIRY_WARNING = timedelta(days=7)


def review_view(item: dict[str, Any], now: datetime, reveal: bool = False) -> dict[str, Any]:
    purge_after: datetime | None = item.get("purge_after")
    view = {
        "id": item["id"],
        "kind": item["kind"],
        "status": item["status"],
        "channel": item["channel"],
        "sender": item["sender"],
        "received": item["received"].isoformat(),
        "candidates": [_candidate(c, reveal) for c in item.get("candidates") or []],
        "results": [
            {k: r.get(k) for k in ("code", "value", "unit", "drawn", "status")}
            for r in item.get("results") or []
        ],
        "findings": list(item.get("findings") or []),
        "patients": list(item.get("patients") or []),
        "message": item.get("message"),  # sender#control id: no identifier of a person
        "resources": list(item.get("resources") or []),
        "purge_after": purge_after.isoformat() if purge_after else None,
        "expires_soon": item["status"] == "open"
        and purge_after is not None
        and purge_after - now < EXPIRY_WARNING,
    }
    if item["status"] != "open":
        resolved_at: datetime | None = item.get("resolved_at")
        view |= {
            "resolved_at": resolved_at.isoformat() if resolved_at else None,
            "resolved_by": item.get("resolved_by"),
            "resolution": item.get("resolution", ""),
            "patient": item.get("patient_id"),
        }
    return view


def _candidate(candidate: dict[str, str], reveal: bool) -> dict[str, str]:
    value = candidate["value"]
    return {
        "field": candidate.get("field", ""),
        "system": candidate.get("system", ""),
        "namespace": candidate.get("namespace", ""),
        "rule": candidate.get("rule", ""),
        "value": value if reveal or candidate.get("rule") == "reference" else mask(value),
    }
