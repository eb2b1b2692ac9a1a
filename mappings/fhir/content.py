"""What makes two versions of a resource the same: its content without id and meta."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def content_hash(data: dict[str, Any]) -> str:
    """Of the resource as sent, without id and meta (a re-send is the same content)."""
    content = {k: v for k, v in data.items() if k not in ("id", "meta")}
    encoded = json.dumps(content, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()
