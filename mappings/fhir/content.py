"""What makes two versions of a resource the same: its content without id and meta."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from typing import Any


def content_hash(data: dict[str, Any]) -> str:
    """Of the resource as sent, without id and meta (a re-send is the same content)."""
    content = {k: v for k, v in data.items() if k not in ("id", "meta")}
    encoded = json.dumps(content, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()


def content_hashes(data: dict[str, Any], fewer: Collection[str]) -> tuple[str, str]:
    """``content_hash(data)``, and that of ``data`` without the keys ``fewer`` too, from one
    encoding of each member (a sorted-key object is its members' encodings joined in order)."""
    members = {
        k: f"{json.dumps(k)}:{json.dumps(v, sort_keys=True, separators=(',', ':'))}"
        for k, v in sorted(data.items())
        if k not in ("id", "meta")
    }
    whole = ",".join(members.values())
    part = ",".join(m for k, m in members.items() if k not in fewer)
    return _sha256("{" + whole + "}"), _sha256("{" + part + "}")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
