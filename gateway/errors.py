"""HTTP error bodies: `{"error": code, "detail": text}` (FHIR OperationOutcome comes later)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from fastapi.responses import JSONResponse


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers
        self.extra = extra


def error_response(
    status: int,
    code: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail, **extra}, status, headers=headers)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, without quoting the document (it may hold names or identifiers)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None)
    return f"not valid YAML{where}" + (f": {problem}" if problem else "")
