"""One JSON object per log line, on stderr.

No protected health information may reach a log line. Request bodies are never logged, and an
exception is rendered as its type and where it was raised, never its message: pydantic and
database errors quote the input they refused, which may be a patient's name or MRN.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from types import TracebackType

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_DROPPED = {"color_message"}  # uvicorn's coloured copy of the message


def safe_exception(exc_type: type[BaseException] | None, tb: TracebackType | None) -> str:
    """`ValueError at gateway/http/admin.py:42 in post_registry`: what and where, not the text."""
    name = exc_type.__name__ if exc_type else "Exception"
    frames = traceback.extract_tb(tb) if tb else []
    if not frames:
        return name
    last = frames[-1]
    return f"{name} at {last.filename}:{last.lineno} in {last.name}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in _DROPPED:
                line[key] = value
        if record.exc_info:
            line["exception"] = safe_exception(record.exc_info[0], record.exc_info[2])
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # library warnings become log lines too, not bare stderr text
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
