"""`rems-gateway serve`: one process with the HTTP server and the single writer.

Start-up: logging, migrations, rule packs, the application (bootstrap), its companions (MLLP
listener, scheduler), the app. Shutdown on SIGTERM/SIGINT:
stop accepting, let in-flight requests finish, finish the writer's queue, close the database.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import ssl
from datetime import timedelta
from types import FrameType

import uvicorn
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from gateway.app.bootstrap import Gateway, bootstrap
from gateway.app.context import UnitContext
from gateway.config import Settings
from gateway.fhir.auth import ADMIN_SCOPE
from gateway.fhir.smart_clients import load_clients
from gateway.http.app import Companion, create_app
from gateway.logs import configure_logging
from gateway.metrics import GatewayMetrics
from gateway.mllp.listener import Hl7Listener
from gateway.mllp.server import MllpSettings
from gateway.mllp.tls import server_tls
from gateway.notify import Deliverer, DeliveryPolicy
from gateway.scheduler import MonitoringScheduler, Schedule
from mappings.hl7v2.senders import SenderDirectory
from rems_core.rulepack import AUTO, PackLibrary
from rems_core.store.db import upgrade

log = logging.getLogger("rems_gateway")

# Inside the default 30 s grace period of common orchestrators, leaving time for the writer.
GRACEFUL_SHUTDOWN_SECONDS = 20


class StartupFailed(RuntimeError):
    """The gateway cannot start; the message is one line for the operator."""


class ShutdownSignals:
    """SIGTERM/SIGINT before and after uvicorn's own handling of them.

    uvicorn handles both while it serves and, once shut down, raises the signal again into the
    handlers it found; without these the process would then die by the signal instead of
    stopping the writer and exiting 0.
    """

    def __init__(self) -> None:
        self.requested = False
        self.server: uvicorn.Server | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.server is None:  # while serving, uvicorn logs the shutdown itself
            log.info("shutdown requested (%s) before serving", signal.Signals(signum).name)
        self.requested = True
        if self.server is not None:
            self.server.should_exit = True


def startup_warnings(settings: Settings, packs: PackLibrary) -> list[str]:
    warnings = []
    if not settings.timezone_is_explicit:
        warnings.append("no --timezone: day counts use UTC")
    if settings.rules != AUTO and not packs.get(settings.rules).advisory:
        others = [
            f"{pack_id} (for {packs.use_for(pack_id)})"
            for pack_id in packs.ids
            if pack_id != settings.rules
        ]
        warnings.append(
            f"rule pack {settings.rules} enforces the Clozapine REMS, which ended on "
            f"{packs.program_ended.isoformat()}; other packs: {'; '.join(others)}"
        )
    if settings.auth == "development":
        warnings.append(
            "INSECURE: --auth development lets every caller of the FHIR endpoint in as a system "
            "client with every scope; for a developer's own machine only (bound to loopback)"
        )
    if settings.admin_token is None and not _smart_admin_clients(settings):
        warnings.append(
            "no admin token (--admin-token, REMS_ADMIN_TOKEN or admin_token in --config) and no "
            "SMART client with the admin scope: admin operations such as POST /admin/registry are "
            "open to anyone who reaches the HTTP port"
        )
    return warnings


def _smart_admin_clients(settings: Settings) -> bool:
    """Whether a SMART client may hold the admin scope (then /admin is not open)."""
    if settings.auth != "smart" or settings.smart_clients is None:
        return False
    try:
        clients = load_clients(settings.smart_clients)
    except ValueError:
        return False  # serve stops on the bad file with its own message
    return any(ADMIN_SCOPE in client.scopes for client in clients.values())


def serve(settings: Settings) -> None:
    """Run the gateway until SIGTERM/SIGINT; raises StartupFailed when it cannot start."""
    configure_logging(settings.log_level)
    signals = ShutdownSignals()
    signals.install()
    _check_tls(settings)
    # Both ports first: one in use is one line naming it, before the database is touched.
    http_socket = bind_port(settings.host, settings.http_port, "HTTP", "--http-port")
    try:
        mllp_socket = bind_port(settings.host, settings.mllp_port, "MLLP", "--mllp-port")
    except StartupFailed:
        http_socket.close()
        raise
    with http_socket, mllp_socket:
        _serve(settings, signals, http_socket, mllp_socket)


def _serve(
    settings: Settings,
    signals: ShutdownSignals,
    http_socket: socket.socket,
    mllp_socket: socket.socket,
) -> None:
    packs = PackLibrary(site_override=settings.site_rules)
    for warning in startup_warnings(settings, packs):
        log.warning(warning)
    _migrate(settings.db)
    retention = timedelta(days=settings.review_retention_days)
    ctx = UnitContext(packs, settings.rules, settings.tz, review_retention=retention)
    with bootstrap(settings.db, ctx) as gateway:
        metrics = GatewayMetrics(gateway.writer)
        running = companions(gateway, settings, metrics, mllp_socket)
        app = create_app(gateway, settings, metrics, running)
        if not signals.requested:
            _run_http(app, settings, signals, http_socket)
    log.info(
        "stopped",
        extra={"writer_commits": gateway.writer.commits, "writer_units": gateway.writer.units},
    )


def companions(
    gateway: Gateway,
    settings: Settings,
    metrics: GatewayMetrics,
    mllp_socket: socket.socket | None = None,
) -> list[Companion]:
    """What runs beside the HTTP server: the MLLP listener (on ``mllp_socket`` when bound
    already), the deliverer of notifications and, on the system clock, the scheduler (with
    ``--clock message`` there is no "now" to run scheduled work up to)."""
    running: list[Companion] = [
        mllp_listener(gateway, settings, metrics, mllp_socket),
        deliverer(gateway, settings, metrics),
    ]
    if settings.clock == "system":
        schedule = Schedule(settings.schedule_every, settings.schedule_lease)
        running.append(MonitoringScheduler(gateway.service, schedule, metrics.scheduler_tick))
    return running


def deliverer(gateway: Gateway, settings: Settings, metrics: GatewayMetrics) -> Deliverer:
    policy = DeliveryPolicy(
        attempts=settings.notify_attempts,
        first_backoff=settings.notify_backoff_seconds,
        max_backoff=settings.notify_backoff_max_seconds,
        timeout=settings.notify_timeout_seconds,
    )
    scheme = "https" if settings.tls_cert else "http"
    base = settings.public_base_url or f"{scheme}://{settings.host}:{settings.http_port}"
    return Deliverer(
        gateway.service, gateway.reads, policy, f"{base}/fhir", metrics.count_notification
    )


def mllp_settings(settings: Settings) -> MllpSettings:
    return MllpSettings(
        host=settings.host,
        port=settings.mllp_port,
        max_frame_bytes=settings.mllp_max_frame_bytes,
        max_connections=settings.mllp_max_connections,
        idle_timeout_s=settings.mllp_idle_timeout_seconds,
        tls_handshake_timeout_s=settings.mllp_tls_handshake_timeout_seconds,
        tls_cert=settings.tls_cert,
        tls_key=settings.tls_key,
        tls_client_ca=settings.mllp_client_ca,
    )


def mllp_listener(
    gateway: Gateway,
    settings: Settings,
    metrics: GatewayMetrics,
    sock: socket.socket | None = None,
) -> Hl7Listener:
    mllp = mllp_settings(settings)
    listener = Hl7Listener(
        gateway.service,
        SenderDirectory.load(settings.senders),
        mllp,
        settings.clock,
        on_ack=metrics.count_ack,
        on_message=metrics.count_hl7_message,
        processing_id=settings.processing_id,
        sock=sock,
    )
    metrics.watch_connections(lambda: listener.server.open_connections)
    return listener


def _migrate(url: str) -> None:
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        upgrade(url)
    except Exception as exc:
        # No patient data is involved yet, so the driver's first line is safe and useful.
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise StartupFailed(
            f"cannot migrate the database {shown}: {type(exc).__name__}: {first_line}"
        ) from exc
    log.info("database schema is up to date", extra={"db": shown})


def _check_tls(settings: Settings) -> None:
    """The TLS files, loaded as both listeners will load them: a bad one is one line, not the
    traceback of the first listener that reads it."""
    if settings.tls_cert is None:
        return
    try:
        server_tls(settings.tls_cert, settings.tls_key, None)
    except (ssl.SSLError, OSError) as exc:
        raise StartupFailed(
            f"cannot use --tls-cert {settings.tls_cert} with --tls-key {settings.tls_key}: "
            f"{_tls_reason(exc)}; give the certificate chain and its private key, both PEM"
        ) from None
    try:
        server_tls(settings.tls_cert, settings.tls_key, settings.mllp_client_ca)
    except (ssl.SSLError, OSError) as exc:
        raise StartupFailed(
            f"cannot use --mllp-client-ca {settings.mllp_client_ca}: {_tls_reason(exc)}; give "
            "the CA certificate(s) of the senders' client certificates, PEM"
        ) from None


def _tls_reason(exc: OSError) -> str:
    return str(getattr(exc, "reason", None) or exc.strerror or type(exc).__name__)


def bind_port(host: str, port: int, what: str, flag: str) -> socket.socket:
    """A socket bound to host:port (as uvicorn binds one), or StartupFailed saying in one line
    why not and what to change."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupFailed(_bind_problem(exc, host, port, what, flag)) from None
    sock.set_inheritable(True)
    return sock


def _bind_problem(exc: OSError, host: str, port: int, what: str, flag: str) -> str:
    where = f"{what} port {port} on {host}"
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {host!r}: no such host name or address; change --host"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"the {where} is already in use (another rems-gateway or another program): stop "
            f"it, or choose another port with {flag}"
        )
    if exc.errno == errno.EACCES:
        return f"no permission to listen on the {where}: choose a port above 1023 with {flag}"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: not an address of this machine; change --host"
    return f"cannot listen on the {where}: {exc.strerror or type(exc).__name__}"


def _run_http(
    app: FastAPI, settings: Settings, signals: ShutdownSignals, sock: socket.socket
) -> None:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        log_config=None,  # logs.py formats every line
        log_level=settings.log_level.lower(),
        access_log=False,  # its lines carry raw paths and queries, which may carry identifiers
        server_header=False,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    server = uvicorn.Server(config)
    signals.server = server
    log.info(
        "serving",
        extra={
            "url": f"{'https' if settings.tls_cert else 'http'}://{_address(sock)}",
            "rules": settings.rules,
            "timezone": settings.timezone,
            "clock": settings.clock,
            "production": settings.production,
            "tls": settings.tls_cert is not None,
        },
    )
    server.run(sockets=[sock])


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
