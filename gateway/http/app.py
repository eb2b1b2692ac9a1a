"""The HTTP side of the gateway: health, readiness, metrics, admin, FHIR, CDS Hooks.

Routes only translate: they call the application service (or its reads) and shape the answer.
What runs beside the HTTP server is handed in as companions, not imported.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.app.bootstrap import Gateway
from gateway.app.writer import RETRY_AFTER_SECONDS, WriterStopped, store_unavailable
from gateway.cds.auth import cds_authenticator
from gateway.cds.feedback import router as cds_feedback_router
from gateway.cds.hooks import router as cds_router
from gateway.cds.readings import Readings
from gateway.config import Settings
from gateway.console.routes import install as install_console
from gateway.fhir.auth import Authenticator, DevelopmentAuth
from gateway.fhir.http import FhirError
from gateway.fhir.http import error_response as fhir_error_response
from gateway.fhir.openapi import describe_fhir_routes
from gateway.fhir.resources import warm_up
from gateway.fhir.router import fhir_router
from gateway.fhir.smart import SmartBackendAuth
from gateway.fhir.token import router as smart_router
from gateway.http.admin import router as admin_router
from gateway.http.errors import ApiError, error_response, error_responses
from gateway.http.guard import RequestGuard
from gateway.http.review import router as review_router
from gateway.metrics import GatewayMetrics, RequestMetricsMiddleware
from mappings.fhir.outcome import Issue
from rems_core.rulepack import OutOfScope

log = logging.getLogger("rems_gateway.http")
CDS_FETCH_SECONDS = 5.0
READY_SCHEMA = {"type": "object", "properties": {"status": {"type": "string"}}}
HTTP_ERROR_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}
FHIR_HTTP_ISSUES = {
    400: "value",
    404: "not-found",
    405: "not-supported",
    413: "too-long",
    401: "login",
    403: "forbidden",
}


class Companion(Protocol):
    """What runs beside the HTTP server for as long as it serves (the MLLP listener, the
    scheduler): built by ``server.py``, started and stopped by the app's lifespan."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def database_problem(engine: Engine) -> str | None:
    # A raw DBAPI connection: SQLAlchemy's BEGIN (IMMEDIATE on SQLite) would take the write lock
    # away from the writer on every probe.
    try:
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute("SELECT version_num FROM alembic_version")
            cursor.fetchall()
        finally:
            connection.close()
    except Exception as exc:  # any driver error means "not ready"; its text may hold the URL
        return f"the database does not answer ({type(exc).__name__})"
    return None


def readiness_problem(gateway: Gateway) -> str | None:
    if not gateway.writer.running:
        return "the writer thread is not running"
    return database_problem(gateway.engine)


def freeze_start_up_heap() -> None:
    """What start-up built (modules, FHIR models, rule packs) lives as long as the process: move
    it out of the collector's generations, so that a large message's many short-lived objects
    do not make every collection walk it again (a 1 MB frame of 175,000 segments: 0.87 s → 0.34 s
    on this machine)."""
    gc.collect()
    gc.freeze()


def create_app(
    gateway: Gateway,
    settings: Settings,
    metrics: GatewayMetrics | None = None,
    companions: Sequence[Companion] = (),
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        for companion in companions:
            await companion.start()
        await asyncio.to_thread(warm_up)  # the FHIR models, before the first request needs them
        freeze_start_up_heap()
        async with httpx.AsyncClient(timeout=CDS_FETCH_SECONDS) as cds_http:
            app.state.cds_http = cds_http  # fetches what a hook's prefetch lacks, JWKS of jku
            yield
        for companion in reversed(companions):
            await companion.stop()  # the listener's in-flight messages finish and are answered

    app = FastAPI(title="rems-gateway", summary="Clozapine REMS gateway", lifespan=lifespan)
    metrics = metrics or GatewayMetrics(gateway.writer)
    app.state.service = gateway.service
    app.state.reads = gateway.reads
    app.state.settings = settings
    app.state.gateway = gateway
    app.state.clock = settings.clock  # the channels read it: the system clock or the event's time
    app.state.metrics = metrics
    gateway.service.decision_observers.append(metrics.count_decision)
    app.add_middleware(
        RequestGuard,
        max_body_bytes=settings.http_max_body_bytes,
        refused=lambda scope, exc: _http_error(_is_fhir_path(scope["path"]), exc),
        unexpected=lambda scope, exc: _unexpected(_is_fhir_path(scope["path"]), exc),
    )
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)  # outside: counts the guard's
    _add_error_handlers(app)
    _add_probes(app, gateway, metrics)
    app.include_router(admin_router)
    app.include_router(review_router)
    app.state.fhir_auth = authenticator(settings)
    app.include_router(smart_router)  # /auth/token, /.well-known/smart-configuration
    app.include_router(fhir_router())
    describe_fhir_routes(app)
    app.state.cds_auth = cds_authenticator(settings)
    app.state.cds_readings = Readings()  # a hook's prefetched resources, read before
    app.include_router(cds_router)  # /cds-services (docs/contracts.md §6)
    app.include_router(cds_feedback_router)
    install_console(app, settings, gateway.ctx.tz)  # /console (docs/contracts.md §8)
    return app


def authenticator(settings: Settings) -> Authenticator:
    if settings.auth == "development":
        return DevelopmentAuth()
    base = str(settings.public_base_url) if settings.public_base_url else None
    return SmartBackendAuth.from_files(settings.smart_clients, settings.smart_signing_key, base)


def _add_probes(app: FastAPI, gateway: Gateway, metrics: GatewayMetrics) -> None:
    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        responses={
            200: {"content": {"application/json": {"schema": READY_SCHEMA}}},
            **error_responses(503),
        },
    )
    def readyz() -> Response:
        problem = readiness_problem(gateway)
        if problem:
            return error_response(503, "not_ready", problem)
        return JSONResponse({"status": "ready"})

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={
            200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}
        },
    )
    async def prometheus_metrics() -> Response:
        await metrics.refresh_review(gateway.reads)
        await metrics.refresh_notifications(gateway.reads)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _is_fhir(request: Request) -> bool:
    return _is_fhir_path(request.url.path)


def _is_fhir_path(path: str) -> bool:
    """FHIR and CDS Hooks answer errors as OperationOutcomes."""
    return path.startswith(("/fhir/", "/cds-services/")) or path in ("/fhir", "/cds-services")


def _http_error(fhir: bool, exc: StarletteHTTPException) -> Response:
    if fhir:
        code = FHIR_HTTP_ISSUES.get(exc.status_code, "processing")
        return fhir_error_response(
            FhirError(exc.status_code, code, str(exc.detail), headers=exc.headers)
        )
    code = HTTP_ERROR_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return error_response(exc.status_code, code, str(exc.detail), exc.headers)


def _unexpected(fhir: bool, exc: Exception) -> Response:
    # Logged by the guard (type and place only, see logs.py); the text may hold PHI.
    text = f"unexpected {type(exc).__name__}"
    if fhir:
        return fhir_error_response(FhirError(500, "exception", text))
    return error_response(500, "internal_error", text)


def _unavailable(fhir: bool, exc: Exception) -> Response:
    """503 + Retry-After: the store (or the writer) cannot take the request now; nothing was
    stored, and the same request later can succeed. The driver's text is not shown (it may
    quote the URL or the data)."""
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    text = (
        "the gateway is shutting down; try again later"
        if isinstance(exc, WriterStopped)
        else f"the store is unavailable ({type(exc).__name__}); try again later"
    )
    if fhir:
        return fhir_error_response(FhirError(503, "transient", text, headers=headers))
    code = "shutting_down" if isinstance(exc, WriterStopped) else "store_unavailable"
    return error_response(503, code, text, headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Errors under /fhir are OperationOutcomes; elsewhere `{"error", "detail"}`."""

    @app.exception_handler(FhirError)
    async def fhir_error(_: Request, exc: FhirError) -> Response:
        return fhir_error_response(exc)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        if _is_fhir(request):
            return fhir_error_response(
                FhirError(exc.status, "processing", exc.detail, headers=exc.headers)
            )
        return error_response(exc.status, exc.code, exc.detail, exc.headers, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _http_error(_is_fhir(request), exc)

    @app.exception_handler(RequestValidationError)
    async def request_error(request: Request, exc: RequestValidationError) -> Response:
        if _is_fhir(request):
            issues = [
                Issue("error", "invalid", e["msg"], (".".join(str(p) for p in e["loc"]),))
                for e in exc.errors()
            ]
            return fhir_error_response(FhirError(400, "invalid", "", issues=issues))
        issues = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        return error_response(422, "invalid_request", "the request is not valid", issues=issues)

    @app.exception_handler(OutOfScope)
    async def out_of_scope(request: Request, exc: OutOfScope) -> Response:
        """An event dated before any rule pack applies (docs/rules.md §0)."""
        if _is_fhir(request):
            return fhir_error_response(
                FhirError(422, "business-rule", str(exc), rems_code=OutOfScope.code)
            )
        return error_response(422, "out_of_scope", str(exc))

    @app.exception_handler(WriterStopped)
    @app.exception_handler(PoolTimeout)
    @app.exception_handler(DBAPIError)
    async def unavailable(request: Request, exc: Exception) -> Response:
        if isinstance(exc, DataError):  # e.g. a NUL or a number the store's columns cannot hold
            text = "a value cannot be stored (out of range or a forbidden character)"
            if _is_fhir(request):
                return fhir_error_response(FhirError(400, "value", text))
            return error_response(400, "invalid_value", text)
        if not store_unavailable(exc):
            log.error("unexpected database error", exc_info=exc)  # type and place only
            return _unexpected(_is_fhir(request), exc)
        log.warning("store unavailable: %s", type(exc).__name__)
        return _unavailable(_is_fhir(request), exc)

    # Any other exception: gateway/http/guard.py answers 500 and keeps the connection.
