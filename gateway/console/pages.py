"""How the console answers: its templates (Jinja2, autoescaped: every value from a message is
text), the headers every console response carries, and the forms it reads."""

from __future__ import annotations

from datetime import date, datetime, tzinfo
from importlib.resources import files
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",  # patients' data: never kept by a browser or a proxy
}
STYLESHEET = files("gateway.console").joinpath("static/console.css").read_bytes()


def environment(tz: tzinfo) -> Environment:
    env = Environment(
        loader=PackageLoader("gateway.console", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )

    def when(moment: datetime | date | None) -> str:
        if moment is None:
            return "—"
        if isinstance(moment, datetime):
            return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M")
        return moment.isoformat()

    env.filters["when"] = when
    env.filters["stamp"] = lambda text: str(text)[:16].replace("T", " ") if text else "—"
    env.filters["codes"] = lambda findings: ", ".join(
        f["code"] if isinstance(f, dict) else str(f) for f in findings or []
    )
    env.globals["query"] = lambda **params: urlencode(
        {k: v for k, v in params.items() if v not in (None, "")}
    )
    return env


R = TypeVar("R", bound=Response)


def secured(response: R) -> R:
    response.headers.update(HEADERS)
    return response


def render(env: Environment, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = env.get_template(name).render(**context)
    return secured(HTMLResponse(html, status_code))


def see_other(location: str) -> Response:
    return secured(RedirectResponse(location, status_code=303))


def stylesheet() -> Response:
    return secured(Response(STYLESHEET, media_type="text/css"))


async def form(request: Request) -> dict[str, str]:
    """An HTML form's fields (application/x-www-form-urlencoded), each its first value."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console page of this gateway, nothing else."""
    if target and target.startswith("/console") and "\\" not in target and "//" not in target:
        return target
    return "/console/messages"
