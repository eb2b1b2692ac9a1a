"""The `rems-gateway` command."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
import yaml

from gateway.app.errors import NotLinkable, ReviewClosed, UnknownPatient, UnknownReviewItem
from rems_core.registry import RegistryInvalid, registry_from
from rems_core.rulepack import PackLibrary
from rems_core.store.db import DEFAULT_URL, upgrade

if TYPE_CHECKING:
    from gateway.scenarios.fhir_live import LiveFhirGateway
    from gateway.scenarios.live import LiveGateway
    from rems_core.audit import ChainHead

T = TypeVar("T")
app = typer.Typer(
    help="Clozapine REMS gateway: HL7 v2 and FHIR in, REMS decisions out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
scenario_app = typer.Typer(help="Scenario files (docs/contracts.md §2).", no_args_is_help=True)
audit_app = typer.Typer(help="The audit trail (docs/rules.md §9).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")
app.add_typer(scenario_app, name="scenario")
review_app = typer.Typer(
    help="The review queue: results of no patient (or of two), reused control ids, merges.",
    no_args_is_help=True,
)
app.add_typer(review_app, name="review")

# --- `rems-gateway --version` ------------------------------------------------------------------


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"rems-gateway {version('rems-gateway')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("rems-gateway (version unknown: the package is not installed)")
        raise typer.Exit()


@app.callback()
def main(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the installed version and exit.",
        ),
    ] = False,
) -> None:
    """Clozapine REMS gateway: HL7 v2 and FHIR in, REMS decisions out."""


DbOption = Annotated[
    str, typer.Option("--db", envvar="REMS_DB", help="Database URL (SQLite file or PostgreSQL).")
]


@db_app.command("upgrade")
def db_upgrade(db: DbOption = DEFAULT_URL) -> None:
    """Apply the schema migrations."""
    with _database_errors("db upgrade", db):
        upgrade(db)
    typer.echo("database schema is up to date")


@audit_app.command("verify")
def audit_verify(
    db: DbOption = DEFAULT_URL,
    checkpoint: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="A checkpoint from `audit checkpoint`"),
    ] = None,
) -> None:
    """Check every audit record, its link to the previous one, the head and a checkpoint;
    exit 1 naming the first bad record."""
    from gateway.app.audit_trail import verify_database

    _audited_database("audit verify", db)
    previous = _checkpoint_file("audit verify", checkpoint) if checkpoint else None
    started = time.perf_counter()
    with _database_errors("audit verify", db):
        problem, head = verify_database(db, previous)
    if problem is not None:
        typer.echo(f"audit chain broken: {problem}", err=True)
        raise typer.Exit(1)
    took = time.perf_counter() - started
    typer.echo(
        f"audit chain intact: {head.seq} records, head {head.hash[:16]}… "
        f"(checked in {took:.1f} s, {head.seq / max(took, 1e-6):,.0f} records/s)"
    )


@audit_app.command("checkpoint")
def audit_checkpoint(
    out: Annotated[Path, typer.Option("--out", dir_okay=False, help="Where to write it")],
    db: DbOption = DEFAULT_URL,
) -> None:
    """Verify the chain (against the checkpoint already in OUT, if any), then write its head to
    OUT, a file kept outside the database (it catches a truncation that rewrote the head)."""
    from gateway.app.audit_trail import ChainBroken, write_checkpoint

    _audited_database("audit checkpoint", db)
    previous = _checkpoint_file("audit checkpoint", out) if out.exists() else None
    try:
        with _database_errors("audit checkpoint", db):
            head = write_checkpoint(db, out, previous)
    except ChainBroken as exc:
        typer.echo(f"audit chain broken, no checkpoint written: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"rems-gateway audit checkpoint: cannot write {out}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"checkpoint written to {out}: record {head.seq}")


# --- `audit`: a --db that is no gateway's database, as one line ---------------------------------


def _audited_database(command: str, db: str) -> None:
    """Exit 2 when --db names no rems-gateway database (creating nothing), 1 when it cannot be
    reached."""
    from gateway.app.audit_trail import gateway_database_problem

    with _database_errors(command, db):
        problem = gateway_database_problem(db)
    if problem is not None:
        typer.echo(f"rems-gateway {command}: {problem}", err=True)
        raise typer.Exit(2)


@contextmanager
def _database_errors(command: str, db: str) -> Iterator[None]:
    """A database that does not answer: one line, exit 1 (the URL without its password; the
    driver's first line, which names no patient: nothing was read yet)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except SQLAlchemyError as exc:
        shown = make_url(db).render_as_string(hide_password=True)
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        typer.echo(
            f"rems-gateway {command}: cannot read the database {shown}: {type(exc).__name__}"
            f"{': ' + cause[0] if cause else ''}",
            err=True,
        )
        raise typer.Exit(1) from None


def _checkpoint_file(command: str, path: Path) -> ChainHead:
    from gateway.app.audit_trail import read_checkpoint

    try:
        return read_checkpoint(path)
    except (OSError, ValueError, KeyError, TypeError):
        typer.echo(
            f"rems-gateway {command}: {path} is not a checkpoint written by `audit checkpoint`",
            err=True,
        )
        raise typer.Exit(2) from None


@app.command("send")
def send_command(
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="HL7 files")],
    to: Annotated[str, typer.Option("--to", help="HOST:PORT of an MLLP listener")],
    tls_ca: Annotated[Path | None, typer.Option(help="Trust this CA (PEM): use TLS")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Client certificate (mutual TLS)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Client key (mutual TLS)")] = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=0.1, help="Seconds to wait for the connection and each ACK"),
    ] = 30.0,
) -> None:
    """Send HL7 v2 messages (one per file, or FHS/BHS batch files) over MLLP; print each ACK.
    A message whose MSH-15 asks for no ACK (NE) is not waited for."""
    from gateway.mllp.sending import NoAck, read_files, send_all
    from mappings.hl7v2.tokenizer import HL7ParseError

    host, port = _send_target(to)
    try:
        outgoing = read_files(files)
    except HL7ParseError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    tls = _send_tls(tls_ca, tls_cert, tls_key)
    try:
        answers = asyncio.run(send_all(host, port, outgoing, tls, timeout))
    except NoAck as exc:
        for answer in exc.answers:
            typer.echo(answer.text())
        typer.echo(f"send failed: {exc} (--timeout SECONDS waits longer)", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"send failed: {_send_problem(exc, host, port, timeout)}", err=True)
        raise typer.Exit(1) from None
    for answer in answers:
        typer.echo(answer.text())
    if not all(answer.accepted for answer in answers):
        raise typer.Exit(1)


# --- `send`: its target, TLS and failures as one line each ------------------------------------


def _send_target(to: str) -> tuple[str, int]:
    """HOST:PORT ([IPv6]:PORT) of --to; exit 2 naming what is wrong with it."""
    host, colon, port = to.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if not colon or not port.isdigit() or not 0 < int(port) < 65536 or (":" in host) != bracketed:
        typer.echo(
            f"rems-gateway send: --to {to!r} is not HOST:PORT: give the MLLP listener's host and "
            "port, e.g. --to 127.0.0.1:2575 (the gateway's --mllp-port, default 2575; IPv6 as "
            "[::1]:2575)",
            err=True,
        )
        raise typer.Exit(2)
    return host or "127.0.0.1", int(port)


def _send_tls(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    from gateway.mllp.client import client_tls

    if not (ca or cert):
        return None
    try:
        return client_tls(ca, cert, key)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        typer.echo(
            f"rems-gateway send: cannot use --tls-ca/--tls-cert/--tls-key: {reason} (PEM files: "
            "the CA that signed the gateway's certificate; a client certificate with its key)",
            err=True,
        )
        raise typer.Exit(2) from None


def _send_problem(exc: OSError, host: str, port: int, timeout: float) -> str:
    """Why the exchange failed, and what to do, in one line (never a traceback)."""
    from gateway.mllp.client import MllpClientError

    target = f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return f"unknown host {host!r} ({exc.strerror}): check the host in --to"
    if isinstance(exc, ConnectionRefusedError):
        return (
            f"nothing listens on {target} (connection refused): start the gateway, or give "
            "--to its MLLP port (`serve --mllp-port`, default 2575)"
        )
    if isinstance(exc, TimeoutError):
        return (
            f"{target} did not answer within {timeout:g} s (--timeout): check the host, the "
            "port and any firewall between, or wait longer with --timeout SECONDS"
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or type(exc).__name__
        return (
            f"TLS with {target} failed ({reason}): does the gateway serve TLS "
            "(`serve --tls-cert`), and did its certificate come from --tls-ca?"
        )
    if isinstance(exc, MllpClientError):
        return f"{exc}: the listener closed the connection (see the gateway's log)"
    return f"cannot connect to {target}: {exc.strerror or exc}: check --to"


REVIEW_REFUSALS = (UnknownReviewItem, ReviewClosed, UnknownPatient, NotLinkable)
RevealOption = Annotated[
    bool, typer.Option("--reveal", help="Show identifier values (at this terminal only)")
]


@review_app.command("list")
def review_list(
    db: DbOption = DEFAULT_URL,
    kind: Annotated[str | None, typer.Option(help="unmatched, ambiguous, conflict, merge")] = None,
    sender: Annotated[str | None, typer.Option(help="MSH-3|MSH-4, or a FHIR client id")] = None,
    older_than: Annotated[str | None, typer.Option(help="at least this old: 7d, 36h")] = None,
    status: Annotated[str, typer.Option(help="open, linked, discarded, purged or all")] = "open",
    reveal: RevealOption = False,
) -> None:
    """One line per item, oldest first; identifier values masked unless --reveal."""
    from gateway.http.review import review_filter

    try:
        wanted = review_filter(kind, sender, older_than, status, 1000, 0)
    except ValueError as exc:
        typer.echo(f"rems-gateway review list: {exc}", err=True)
        raise typer.Exit(2) from None
    items, total = _with_reads(db, lambda reads: reads.review_items(wanted))
    from mappings.review import review_view

    now = _now()
    for item in items:
        typer.echo(review_line(review_view(item, now, reveal)))
    shown = f"{len(items)} of {total}" if total > len(items) else str(total)
    typer.echo(f"{shown} item{'s' if total != 1 else ''}")


def review_line(view: dict[str, Any]) -> str:
    named = ", ".join(
        f"{c['field']} {c['system'] or '(no system)'}|{c['value']}" for c in view["candidates"]
    )
    parts = [view["id"], view["kind"], view["status"], view["received"], view["sender"] or "-"]
    parts += [named or "-", f"{len(view['results'])} result(s)"]
    if view["purge_after"]:
        soon = " (soon)" if view["expires_soon"] else ""
        parts.append(f"purged after {view['purge_after']}{soon}")
    return "  ".join(parts)


@review_app.command("show")
def review_show(
    item: Annotated[str, typer.Argument(help="The item's id (rev-…)")],
    db: DbOption = DEFAULT_URL,
    reveal: RevealOption = False,
) -> None:
    """Everything the gateway holds of one item (YAML)."""
    from mappings.review import review_view

    found = _with_reads(db, lambda reads: reads.review_item(item))
    if found is None:
        typer.echo(f"rems-gateway review show: no review item {item}", err=True)
        raise typer.Exit(1)
    typer.echo(yaml.safe_dump(review_view(found, _now(), reveal), sort_keys=False).rstrip())


@review_app.command("link")
def review_link(
    item: Annotated[str, typer.Argument(help="The item's id (rev-…)")],
    patient: Annotated[str, typer.Option(help="The registry patient's REMS id")],
    identifier: Annotated[
        str | None,
        typer.Option(help="system|value to attach (default: every one the item resolved)"),
    ] = None,
    db: DbOption = DEFAULT_URL,
) -> None:
    """File the item to a registry patient: its identifier is attached (later messages match)
    and every result held for it is filed, oldest first."""
    from gateway.http.review import refused
    from rems_core.model import Identifier

    given = None
    if identifier is not None:
        system, bar, value = identifier.partition("|")
        if not bar or not system or not value:
            typer.echo("rems-gateway review link: --identifier is system|value", err=True)
            raise typer.Exit(2)
        given = Identifier(system, value)
    try:
        linked = _with_service(
            db, lambda service, source: service.link_review(item, patient, given, source, _now())
        )
    except REVIEW_REFUSALS as exc:
        typer.echo(f"rems-gateway review link: {refused(exc).detail}", err=True)
        raise typer.Exit(1) from None
    filed = linked.attached.filed
    typer.echo(
        f"linked {item} to {linked.patient_id}: {len(linked.attached.added)} identifier(s) "
        f"added, {len(filed)} item(s) filed ({', '.join(filed)})"
    )


@review_app.command("discard")
def review_discard(
    item: Annotated[str, typer.Argument(help="The item's id (rev-…)")],
    reason: Annotated[str, typer.Option(help="Why it is nobody's (kept with who and when)")],
    db: DbOption = DEFAULT_URL,
) -> None:
    """Close an item without filing it; who, when and why are kept."""
    from gateway.http.review import refused

    try:
        _with_service(
            db, lambda service, source: service.discard_review(item, reason, source, _now())
        )
    except REVIEW_REFUSALS as exc:
        typer.echo(f"rems-gateway review discard: {refused(exc).detail}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"discarded {item}")


@app.command("tasks")
def tasks_list(
    db: DbOption = DEFAULT_URL,
    prescriber: Annotated[str | None, typer.Option(help="The owner's NPI")] = None,
    patient: Annotated[str | None, typer.Option(help="The patient's REMS id")] = None,
    kind: Annotated[str | None, typer.Option(help="psf-due, anc-overdue, …")] = None,
    status: Annotated[str, typer.Option(help="requested, completed, cancelled or all")] = (
        "requested"
    ),
) -> None:
    """The worklist (docs/contracts.md §7): one line per task, newest first."""
    from rems_core.store.worklist_repo import TaskFilter
    from rems_core.worklist import TaskKind

    if status not in ("requested", "completed", "cancelled", "all"):
        typer.echo(
            "rems-gateway tasks: --status is requested, completed, cancelled or all", err=True
        )
        raise typer.Exit(2)
    if kind is not None and kind not in {k.value for k in TaskKind}:
        known = ", ".join(k.value for k in TaskKind)
        typer.echo(f"rems-gateway tasks: --kind is one of {known}", err=True)
        raise typer.Exit(2)
    wanted = TaskFilter(patient, prescriber, None if status == "all" else status, kind, count=1000)
    rows, total = _with_reads(db, lambda reads: reads.task_rows(wanted))
    for row in rows:
        typer.echo(task_line(row))
    shown = f"{len(rows)} of {total}" if total > len(rows) else str(total)
    typer.echo(f"{shown} task{'s' if total != 1 else ''}")


def task_line(row: dict[str, Any]) -> str:
    due = f"due {row['due'].date().isoformat()}" if row["due"] else "-"
    owner = f"owner {row['owner_npi']}" if row["owner_npi"] else "operator"
    parts = [row["id"], row["kind"], row["status"], row["patient_id"] or "-", owner, due]
    return "  ".join([*parts, row["reason"], *([row["focus"]] if row["focus"] else [])])


def _now() -> datetime:
    return datetime.now(UTC)


def _with_reads(db: str, read: Callable[[Any], Awaitable[T]]) -> T:
    from gateway.app.bootstrap import bootstrap

    upgrade(db)
    with bootstrap(db) as gateway:
        return asyncio.run(read(gateway.reads))


def _with_service(db: str, act: Callable[[Any, Any], Awaitable[T]], rules: str | None = None) -> T:
    from getpass import getuser

    from gateway.app.bootstrap import bootstrap
    from gateway.app.context import UnitContext
    from gateway.app.values import Source

    upgrade(db)
    with bootstrap(db, UnitContext(rules=rules) if rules else None) as gateway:
        return asyncio.run(act(gateway.service, Source("cli", f"cli:{getuser()}")))


@app.command("load-registry")
def load_registry(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="YAML registry file")],
    db: DbOption = DEFAULT_URL,
) -> None:
    """Load prescribers, designees, pharmacies and patients (idempotent; changes are updates)."""
    from gateway.app.bootstrap import bootstrap
    from gateway.app.values import Source
    from rems_core.registry import RegistryConflict, yaml_problem

    try:
        doc = registry_from(yaml.safe_load(file.read_text(encoding="utf-8")))
    except yaml.YAMLError as exc:
        typer.echo(f"{file}: {yaml_problem(exc)}", err=True)
        raise typer.Exit(2) from None
    except RegistryInvalid as exc:
        typer.echo(f"{file}: {exc}", err=True)
        raise typer.Exit(2) from None
    from gateway.toolkit.progress import progress

    upgrade(db)
    with bootstrap(db) as gateway, progress(f"loading {file.name}", None):
        try:
            loaded = asyncio.run(gateway.service.load_registry(doc, Source("cli", "load-registry")))
        except RegistryConflict as exc:
            typer.echo(f"{file}: refused, nothing loaded: {exc}", err=True)
            raise typer.Exit(2) from exc
    trade = (
        f"{len(doc.wholesalers)} wholesalers, {len(doc.distributors)} distributors, "
        if doc.wholesalers or doc.distributors
        else ""
    )
    typer.echo(
        f"loaded {len(doc.prescribers)} prescribers, {len(doc.pharmacies)} pharmacies, "
        f"{trade}{len(loaded)} patients"
    )


# --- the certification lookup and the shipment check (docs/rules.md §10) ------------------------


@app.command("lookup")
def lookup_command(
    key: Annotated[
        str,
        typer.Argument(help="An NPI, a wholesaler's or distributor's id, or an identifier value"),
    ],
    db: DbOption = DEFAULT_URL,
) -> None:
    """A registry party's kind, name and certification per setting with its dates (today);
    exit 1 when nothing is found. Audited (kind lookup, channel cli)."""
    from rems_core.parties import party_lines
    from rems_core.store.parties_repo import ANY, PartyQuery

    today = _now().date()
    query = PartyQuery(ANY, key=key, day=today, count=100)
    found, _ = _with_service(db, lambda service, source: service.look_up(query, source))
    if not found:
        typer.echo(f"rems-gateway lookup: nothing in the registry is {key!r}", err=True)
        raise typer.Exit(1)
    for party in found:
        typer.echo("\n".join(party_lines(party, today)))


@app.command("ship-check")
def ship_check_command(
    wholesaler: Annotated[
        str, typer.Option(help="The wholesaler's (or distributor's) id, or system|value")
    ],
    pharmacy: Annotated[str, typer.Option(help="The pharmacy's NPI")],
    on: Annotated[str | None, typer.Option(help="The day (YYYY-MM-DD; default today)")] = None,
    db: DbOption = DEFAULT_URL,
    rules: Annotated[
        str, typer.Option("--rules", envvar="REMS_RULES", help="A pack id or auto")
    ] = "clozapine-rems-2021",
) -> None:
    """May the wholesaler ship clozapine to the pharmacy on the day? Exit 0 allowed, 1 refused.
    Audited (kind ship_check, channel cli)."""
    from datetime import date

    from rems_core.model import Identifier
    from rems_core.rulepack import OutOfScope, RulePackError
    from rems_core.shipping import ShipmentQuery

    try:
        day = date.fromisoformat(on) if on else _now().date()
    except ValueError:
        typer.echo("rems-gateway ship-check: --on is a date, YYYY-MM-DD", err=True)
        raise typer.Exit(2) from None
    system, bar, value = wholesaler.partition("|")
    named = Identifier(system, value) if bar else None
    query = ShipmentQuery(named, "" if bar else wholesaler, pharmacy, day)
    try:
        checked, _ = _with_service(
            db, lambda service, source: service.check_shipment(query, source), rules
        )
    except (OutOfScope, RulePackError) as exc:
        typer.echo(f"rems-gateway ship-check: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{checked.outcome.value} ({checked.rule_pack} v{checked.rule_pack_version})")
    for kind, findings in (("reason", checked.reasons), ("warning", checked.warnings)):
        for found in findings:
            typer.echo(f"  {kind} {found.code}: {found.text}")
    if not checked.allowed:
        raise typer.Exit(1)


# --- the operator's toolkit: explain, replay, demo (gateway/toolkit/) ---------------------------

SendersOption = Annotated[
    Path | None,
    typer.Option(envvar="REMS_SENDERS", exists=True, dir_okay=False, help="HL7 senders file"),
]
RulesOption = Annotated[str, typer.Option("--rules", envvar="REMS_RULES", help="A pack id or auto")]
TimezoneOption = Annotated[
    str, typer.Option(envvar="REMS_TIMEZONE", help="Site time zone (IANA name)")
]


def _configuration(senders: Path | None, rules: str, timezone: str) -> Any:
    from gateway.toolkit.commands import Configuration
    from mappings.hl7v2.senders import SenderDirectory, SendersFileError

    try:
        return Configuration(SenderDirectory.load(senders), rules, _zone(timezone))
    except (SendersFileError, ValueError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def _zone(name: str) -> str:
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(name)
    except (ValueError, KeyError):
        raise ValueError(f"--timezone {name!r}: not an IANA time zone") from None
    return name


def _moment(option: str, text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        typer.echo(f"{option} {text!r}: an ISO 8601 time with its UTC offset", err=True)
        raise typer.Exit(2)
    return moment


@app.command("explain")
def explain_command(
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="HL7 or FHIR")],
    db: Annotated[str | None, typer.Option(help="Read the registry here (nothing stored)")] = None,
    senders: SendersOption = None,
    rules: RulesOption = "clozapine-rems-2021",
    timezone: TimezoneOption = "UTC",
    at: Annotated[str | None, typer.Option(help="Clinical now (default: the message's)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The same, as JSON")] = False,
    reveal: RevealOption = False,
) -> None:
    """What the gateway would make of an HL7 v2 message (or batch file), a FHIR resource or a
    Bundle: sender, patient match, each result, decisions, the answer. Stores nothing."""
    from gateway.toolkit.commands import ToolkitError, explain

    config = _configuration(senders, rules, timezone)
    try:
        typer.echo(explain(files, db, config, _moment("--at", at), as_json, reveal))
    except ToolkitError as exc:
        typer.echo(f"rems-gateway explain: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command("replay")
def replay_command(
    db: Annotated[str, typer.Option("--db", envvar="REMS_DB", help="The gateway's database")],
    ids: Annotated[list[str] | None, typer.Option("--id", help="MSH-10 (repeat it)")] = None,
    sender: Annotated[str | None, typer.Option(help="MSH-3|MSH-4")] = None,
    since: Annotated[str | None, typer.Option(help="Received at or after (ISO 8601)")] = None,
    until: Annotated[str | None, typer.Option(help="Received before (ISO 8601)")] = None,
    disposition: Annotated[str | None, typer.Option(help="accepted, unmatched, …")] = None,
    senders: SendersOption = None,
    rules: RulesOption = "clozapine-rems-2021",
    timezone: TimezoneOption = "UTC",
) -> None:
    """Stored HL7 v2 lab messages processed again under this configuration, with their
    original arrival time; results on file are not stored twice. One line per message."""
    from getpass import getuser

    from gateway.app.values import Source
    from gateway.toolkit.commands import replay, replay_line, replay_summary
    from rems_core.store.message_repo import MessageFilter

    wanted = MessageFilter(
        tuple(ids or ()), sender, _moment("--since", since), _moment("--until", until), disposition
    )
    config = _configuration(senders, rules, timezone)
    done = replay(db, wanted, config, Source("cli", f"cli:{getuser()}"))
    for replayed in done:
        typer.echo(replay_line(replayed))
    typer.echo(replay_summary(done))


@app.command("demo")
def demo_command(
    keep: Annotated[
        Path | None, typer.Option(file_okay=False, help="Keep the database here")
    ] = None,
) -> None:
    """A database of its own with the demo registry and some fixture traffic, and what to open
    and send next."""
    from gateway.toolkit.demo import run_demo

    try:
        typer.echo("\n".join(run_demo(keep)))
    except FileNotFoundError as exc:
        typer.echo(f"rems-gateway demo: {exc}", err=True)
        raise typer.Exit(2) from None


@scenario_app.command("run")
def scenario_run(
    files: Annotated[list[Path], typer.Argument(help="Scenario YAML files")],
    via: Annotated[
        str,
        typer.Option(
            help="inprocess (the application service), mllp (lab and hl7 steps over MLLP: to "
            "a listener on a loopback port, or with --mllp to a running gateway; the other "
            "steps through the service) or fhir (lab, labs, dispense, psf, sign and fhir steps "
            "to the FHIR endpoint on a loopback port, with the runner's own SMART clients, or "
            "with --fhir to a running gateway; advance_to through the service or its admin API)"
        ),
    ] = "inprocess",
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="Run every file against this database (with --mllp or --fhir: the gateway's)",
        ),
    ] = None,
    mllp: Annotated[
        str | None,
        typer.Option(help="HOST:PORT of a running gateway (`serve --clock message`); needs --db"),
    ] = None,
    gateway: Annotated[
        str | None,
        typer.Option(
            help="http://HOST:PORT of that gateway: registry and scheduled work via its /admin API"
        ),
    ] = None,
    admin_token: Annotated[
        str | None, typer.Option(envvar="REMS_ADMIN_TOKEN", help="Bearer token for /admin/*")
    ] = None,
    sender: Annotated[
        str | None, typer.Option(help="APP|FACILITY: MSH-3 and MSH-4 of the runner's ORU^R01")
    ] = None,
    fhir: Annotated[
        str | None,
        typer.Option(
            help="http://HOST:PORT of a running gateway (`serve --clock message --smart-clients "
            "DIR/smart-clients.yaml`); needs --via fhir and --smart-keys"
        ),
    ] = None,
    smart_keys: Annotated[
        Path | None,
        typer.Option(help="DIR of `scenario clients`: the runner's SMART clients' private keys"),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run scenario files; exit 1 on any mismatch, with a diff per failed step."""
    from gateway.scenarios.runner import DatabaseFactory, format_report, run_file, summary_line

    if via not in ("inprocess", "mllp", "fhir"):
        typer.echo(f"--via {via}: use inprocess, mllp or fhir", err=True)
        raise typer.Exit(2)
    live = _live_fhir(via, db, fhir, smart_keys, mllp) or _live_gateway(
        via, db, mllp, gateway, admin_token, sender
    )
    packs = PackLibrary()
    factory = None if db or fhir else DatabaseFactory()
    if db and live is None:
        upgrade(db)
    from gateway.toolkit.progress import progress

    reports = []
    try:
        with progress("scenario files", len(files)) as advance:
            for path in files:
                url = db or (factory.fresh_url() if factory else None)
                reports.append(asyncio.run(run_file(path, url, packs, via, live)))
                typer.echo(format_report(reports[-1], verbose))
                advance(path.name)
    finally:
        if factory:
            factory.close()
    typer.echo(summary_line(reports))
    if not all(report.passed for report in reports):  # skipped files fail nothing
        raise typer.Exit(1)


def _refuse_run(problem: str) -> NoReturn:
    """`scenario run` options that do not fit together: say which, exit 2."""
    typer.echo(f"scenario run: {problem}", err=True)
    raise typer.Exit(2)


def _live_fhir(
    via: str, db: str | None, fhir: str | None, smart_keys: Path | None, mllp: str | None
) -> LiveFhirGateway | None:
    """The running gateway of `--via fhir --fhir URL --smart-keys DIR [--db URL]`, or None (exit
    2 when the options do not fit together)."""
    from gateway.scenarios.fhir_live import LiveFhirGateway
    from gateway.scenarios.live import LiveRunError, schema_problem

    if fhir is None:
        if smart_keys is not None:
            _refuse_run("--smart-keys is for a running gateway: give --fhir URL")
        return None
    if via != "fhir" or mllp is not None:
        _refuse_run("--fhir needs --via fhir (and no --mllp)")
    if smart_keys is None:
        _refuse_run("--fhir needs --smart-keys DIR (made by `rems-gateway scenario clients`)")
    problem = schema_problem(db) if db else None
    if problem:
        _refuse_run(problem)
    try:
        return LiveFhirGateway.parse(fhir, smart_keys, db)
    except LiveRunError as exc:
        _refuse_run(str(exc))


@scenario_app.command("clients")
def scenario_clients(
    files: Annotated[list[Path], typer.Argument(help="Scenario YAML files")],
    out: Annotated[Path, typer.Option("--out", file_okay=False, help="Folder to write into")],
) -> None:
    """Write the runner's SMART clients for a running gateway: OUT/smart-clients.yaml (public
    keys: `scenario-runner` with admin, `scenario-prescriber-<NPI>` per prescriber of the files)
    for `serve --smart-clients`, OUT/cds-clients.yaml (the runner as an EHR calling the CDS
    services) for `serve --cds-clients`, and their private keys in OUT (0600) for
    `--smart-keys`."""
    from gateway.scenarios.fhir import signer_npis
    from gateway.scenarios.file import ScenarioError, load
    from gateway.scenarios.smart import CDS_CLIENTS_FILE, write_key_folder

    npis: list[str] = []
    for path in files:
        try:
            npis += signer_npis(load(path))
        except (ScenarioError, OSError) as exc:
            typer.echo(f"scenario clients: {path}: {exc}", err=True)
            raise typer.Exit(2) from None
    clients_file = write_key_folder(out, npis)
    cds_file = clients_file.parent / CDS_CLIENTS_FILE
    typer.echo(
        f"wrote {clients_file} ({len(set(npis))} prescriber clients), {cds_file} and private keys"
    )
    typer.echo(
        f"start the gateway with: rems-gateway serve --clock message --smart-clients {clients_file}"
        f" --cds-clients {cds_file}"
    )


def _live_gateway(
    via: str,
    db: str | None,
    mllp: str | None,
    http_url: str | None,
    admin_token: str | None,
    sender: str | None,
) -> LiveGateway | None:
    """The running gateway of `--via mllp --mllp HOST:PORT --db URL`, or None (exit 2 when the
    options do not fit together)."""
    from gateway.scenarios.live import (
        SENDER,
        LiveGateway,
        LiveRunError,
        parse_sender,
        schema_problem,
    )

    if mllp is None:
        if http_url or sender:
            _refuse_run("--gateway and --sender are for a running gateway: give --mllp HOST:PORT")
        return None
    if via != "mllp":
        _refuse_run("--mllp needs --via mllp")
    if db is None:
        _refuse_run("--mllp needs --db, the running gateway's database")
    problem = schema_problem(db)
    if problem:
        _refuse_run(problem)
    try:
        identity = parse_sender(sender) if sender else SENDER
        return LiveGateway.parse(
            mllp, db, http_url=http_url, admin_token=admin_token, sender=identity
        )
    except LiveRunError as exc:
        _refuse_run(str(exc))


@app.command("serve")
def serve_command(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default 127.0.0.1)")
    ] = None,
    http_port: Annotated[
        int | None, typer.Option("--http-port", "--port", help="HTTP port (default 8080)")
    ] = None,
    mllp_port: Annotated[int | None, typer.Option(help="MLLP port (default 2575)")] = None,
    db: Annotated[str | None, typer.Option(help=f"Database URL (default {DEFAULT_URL})")] = None,
    rules: Annotated[
        str | None, typer.Option(help="Rule pack id, or auto (default clozapine-rems-2021)")
    ] = None,
    site_rules: Annotated[Path | None, typer.Option(help="Site override file of the packs")] = None,
    timezone: Annotated[
        str | None, typer.Option(help="Site time zone, IANA name; day counts use it (default UTC)")
    ] = None,
    clock: Annotated[
        str | None, typer.Option(help="system, or message: the clinical now from each event")
    ] = None,
    processing_id: Annotated[
        str | None,
        typer.Option(help="HL7 MSH-11 applied: P (default), T training or D debug gateway"),
    ] = None,
    production: Annotated[
        bool | None, typer.Option("--production/--no-production", help="Production deployment")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(envvar="REMS_CONFIG", help="Config file (YAML or TOML; keys = settings)"),
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option(help="Bearer token for /admin/* (REMS_ADMIN_TOKEN keeps it out of ps)"),
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    log_level: Annotated[
        str | None, typer.Option(help="debug, info, warning, error (default info)")
    ] = None,
    senders: Annotated[
        Path | None, typer.Option(help="HL7 senders file: identities, code maps, time zones")
    ] = None,
    mllp_client_ca: Annotated[
        Path | None, typer.Option(help="MLLP mutual TLS: CA of the client certificates")
    ] = None,
    mllp_max_frame_bytes: Annotated[
        int | None,
        typer.Option(help="Largest MLLP frame; larger: AE 207 FRAME_TOO_LARGE (default 1 MiB)"),
    ] = None,
    mllp_max_connections: Annotated[
        int | None, typer.Option(help="MLLP connections at once; more are closed (default 256)")
    ] = None,
    mllp_idle_timeout_seconds: Annotated[
        float | None,
        typer.Option(help="Close an MLLP connection silent this long (default 600)"),
    ] = None,
    mllp_tls_handshake_timeout_seconds: Annotated[
        float | None, typer.Option(help="Longest MLLP TLS handshake (default 30)")
    ] = None,
    schedule_every_minutes: Annotated[
        int | None,
        typer.Option(help="Run scheduled monitoring work every N minutes (default 15)"),
    ] = None,
    schedule_every_seconds: Annotated[
        int | None,
        typer.Option(help="Run scheduled work every N seconds (wins over the minutes; tests)"),
    ] = None,
    schedule_lease_seconds: Annotated[
        int | None,
        typer.Option(help="Scheduler lease time to live: another gateway takes over after it"),
    ] = None,
    http_max_body_bytes: Annotated[
        int | None,
        typer.Option(help="Largest HTTP request body; larger ones get 413 (default 4 MiB)"),
    ] = None,
    json_max_depth: Annotated[
        int | None,
        typer.Option(help="Deepest nesting of a JSON or YAML body; deeper gets 400 (default 64)"),
    ] = None,
    review_retention_days: Annotated[
        int | None,
        typer.Option(help="Days results of no registry patient are kept for review (default 30)"),
    ] = None,
    notify_attempts: Annotated[
        int | None,
        typer.Option(help="Attempts at a notification before it is dead-lettered (default 8)"),
    ] = None,
    notify_backoff_seconds: Annotated[
        float | None,
        typer.Option(help="Wait before a notification's 2nd attempt, doubled after (default 1)"),
    ] = None,
    notify_backoff_max_seconds: Annotated[
        float | None,
        typer.Option(help="Longest wait between a notification's attempts (default 300)"),
    ] = None,
    notify_timeout_seconds: Annotated[
        float | None,
        typer.Option(help="Timeout of each notification POST to an endpoint (default 10)"),
    ] = None,
    console_session_minutes: Annotated[
        int | None,
        typer.Option(help="How long a sign-in to the operator console lasts (default 480)"),
    ] = None,
    audit_checkpoint: Annotated[
        Path | None,
        typer.Option(help="The `audit checkpoint --out` file the console verifies against"),
    ] = None,
    auth: Annotated[
        str | None,
        typer.Option(
            help="FHIR security: smart (SMART Backend Services, the default) or development "
            "(INSECURE: everyone is a system client; loopback only)"
        ),
    ] = None,
    smart_clients: Annotated[
        Path | None,
        typer.Option(help="SMART Backend Services clients file: ids, public keys, scopes"),
    ] = None,
    cds_clients: Annotated[
        Path | None,
        typer.Option(
            help="CDS Hooks clients file: the EHRs (JWT issuers) that may call /cds-services, "
            "their keys or allowed jku, fhirServers"
        ),
    ] = None,
    public_base_url: Annotated[
        str | None,
        typer.Option(
            help="The gateway's public URL (e.g. https://rems.example.org): SMART assertions' "
            "aud is <it>/auth/token, CDS JWTs' <it>/cds-services/<id>"
        ),
    ] = None,
    smart_signing_key: Annotated[
        Path | None,
        typer.Option(
            help="PEM private key (EC P-384 or RSA) signing access tokens; shared by processes"
        ),
    ] = None,
) -> None:
    """Run the gateway: HTTP (FHIR, health, readiness, metrics, admin), MLLP and the scheduler.

    Flags > REMS_… > --config."""
    flags = {name: value for name, value in locals().items() if name != "config"}
    from gateway.config import ConfigError, load_settings
    from gateway.server import StartupFailed, serve

    try:
        settings = load_settings(flags, config)
    except ConfigError as exc:
        typer.echo(f"rems-gateway serve: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        serve(settings)
    except StartupFailed as exc:
        typer.echo(f"rems-gateway serve: {exc}", err=True)
        raise typer.Exit(1) from None


# --- `rems-gateway token`: a SMART access token for scripts -------------------------------------


@app.command("token")
def token_command(
    client: Annotated[str, typer.Option("--client", help="The client_id (the clients file's)")],
    key: Annotated[
        Path,
        typer.Option(
            "--key", dir_okay=False, help="The client's private key (PEM; EC P-384 or RSA)"
        ),
    ],
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="Scopes to ask for (repeat or space-separated; default: every scope the "
            "gateway announces, narrowed by it to the client's)",
        ),
    ] = None,
    gateway: Annotated[
        str,
        typer.Option("--gateway", envvar="REMS_GATEWAY_URL", help="The gateway's base URL"),
    ] = "http://127.0.0.1:8080",
    kid: Annotated[str | None, typer.Option(help="The key's kid in the clients file")] = None,
    tls_ca: Annotated[
        Path | None, typer.Option(help="Trust this CA (PEM) for an https gateway")
    ] = None,
) -> None:
    """Get an access token (SMART Backend Services): sign an assertion with the client's key,
    exchange it at the token endpoint the gateway announces, print the token alone on stdout
    (TOKEN=$(rems-gateway token …))."""
    from gateway.smart_token import TokenError, access_token, gateway_base, read_key, trusted

    scopes = [part for given in scope or [] for part in given.split()]
    try:
        base = gateway_base(gateway)
        signing = read_key(key)
        token = access_token(base, client, signing, scopes, kid=kid, verify=trusted(tls_ca))
    except TokenError as exc:
        typer.echo(f"rems-gateway token: {exc}", err=True)
        raise typer.Exit(2 if exc.usage else 1) from None
    typer.echo(token)
