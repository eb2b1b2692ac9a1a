"""The scenario runner: a file's steps through one channel (channel.py and the channels derived
from it), the answers compared with `expect`."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from gateway.app.bootstrap import Gateway, bootstrap
from gateway.app.context import UnitContext
from gateway.scenarios.channel import InProcessChannel, NotSupportedYet
from gateway.scenarios.fhir import FhirChannel
from gateway.scenarios.fhir_live import LiveFhirChannel, LiveFhirGateway
from gateway.scenarios.file import NO_DRAFT, Scenario, ScenarioError, Step, load, read
from gateway.scenarios.live import LiveGateway, LiveMllpChannel
from gateway.scenarios.mllp import MllpChannel
from rems_core.rulepack import OutOfScope, PackLibrary, RulePackError
from rems_core.store.db import upgrade


@dataclass
class StepReport:
    step: Step
    actual: dict[str, Any]
    problems: list[str]
    skipped: str = ""


@dataclass
class FileReport:
    path: Path
    name: str = ""
    steps: list[StepReport] = field(default_factory=list)
    error: str = ""

    @property
    def passed(self) -> bool:
        """Nothing failed (a skipped file too: it failed nothing)."""
        return not self.error and all(not s.problems for s in self.steps)

    @property
    def skipped(self) -> bool:
        """Every step was skipped (e.g. an all-HL7 file `--via fhir`): nothing was checked."""
        return self.passed and bool(self.steps) and all(s.skipped for s in self.steps)

    @property
    def status(self) -> str:
        return "FAIL" if not self.passed else "SKIP" if self.skipped else "PASS"


def codes(items: list[dict[str, str]] | None) -> set[str]:
    return {i["code"] for i in items or ()}


def compare(expect: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """What differs, one readable line per expect key."""
    problems = []
    for key, wanted in expect.items():
        if key == "reasons":
            got = codes(actual.get("reasons"))
            if set(map(str, wanted or ())) != got:
                missing = sorted(set(map(str, wanted or ())) - got)
                extra = sorted(got - set(map(str, wanted or ())))
                problems.append(
                    f"reasons: expected {sorted(map(str, wanted or ()))}, got {sorted(got)}"
                    f" (missing {missing}, unexpected {extra})"
                )
        elif key == "warnings":
            got = codes(actual.get("warnings"))
            missing = sorted(set(map(str, wanted or ())) - got)
            if missing:
                problems.append(f"warnings: missing {missing}; got {sorted(got)}")
        elif key == "tasks":
            problems += _tasks_problems(wanted, actual.get("tasks"))
        elif key == "draft":
            problems += _draft_problems(wanted, actual.get("draft"))
        elif key in ("summary", "detail"):
            problems += _fragments_problems(key, wanted, actual.get(key))
        elif key == "override_reasons":
            missing = sorted(set(map(str, wanted or ())) - set(actual.get(key) or ()))
            if missing:
                problems.append(f"{key}: missing {missing}; got {actual.get(key)}")
        elif key == "rda" and isinstance(wanted, bool):
            if bool(actual.get("rda")) != wanted:
                problems.append(
                    f"rda: expected {'one' if wanted else 'none'}, got {actual.get('rda')!r}"
                )
        else:
            got = actual.get(key)
            same = (
                str(got) == str(wanted) if got is not None and wanted is not None else got == wanted
            )
            if not same:
                problems.append(f"{key}: expected {wanted!r}, got {got!r}")
    return problems


def _fragments_problems(key: str, wanted: Any, got: str | None) -> list[str]:
    """`summary`, `detail`: every fragment appears in the card's text."""
    fragments = [wanted] if isinstance(wanted, str) else list(wanted or ())
    missing = [str(f) for f in fragments if str(f) not in (got or "")]
    return [f"{key}: {missing} not in {got!r}"] if missing else []


def _tasks_problems(wanted: list[str], got: list[str] | None) -> list[str]:
    """`tasks`: the kinds of the open tasks, set equality."""
    if set(wanted) == set(got or ()):
        return []
    missing = sorted(set(wanted) - set(got or ()))
    extra = sorted(set(got or ()) - set(wanted))
    return [f"tasks: expected {wanted}, got {got} (missing {missing}, unexpected {extra})"]


def _draft_problems(wanted: str | dict[str, Any], got: dict[str, Any] | None) -> list[str]:
    """`draft`: none, or the named fields of the open draft."""
    if wanted == NO_DRAFT or got is None:
        same = wanted == NO_DRAFT and got is None
        return [] if same else [f"draft: expected {wanted}, got {got or NO_DRAFT}"]
    assert isinstance(wanted, dict)
    return [
        f"draft.{key}: expected {value!r}, got {got.get(key)!r}"
        for key, value in wanted.items()
        if got.get(key) != value
    ]


class DatabaseFactory:
    """Fresh, migrated databases, made fast by cloning one template migrated once.

    ``base_url`` None: SQLite files, each a copy of a migrated template file in a temporary folder.
    A PostgreSQL URL: the server, and the maintenance database on it from which databases are
    created; each fresh database is ``CREATE DATABASE … TEMPLATE rems_tpl_<pid>_<k>``.
    """

    def __init__(self, base_url: str | None = None) -> None:
        self._databases = _SqliteDatabases() if base_url is None else _PostgresDatabases(base_url)

    def fresh_url(self) -> str:
        return self._databases.fresh_url()

    def drop(self, url: str) -> None:
        """Remove one database that ``fresh_url`` made (its engines should be disposed)."""
        self._databases.drop(url)

    def close(self) -> None:
        """Remove every database made here, and the template."""
        self._databases.close()


class _SqliteDatabases:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="rems-scenarios-"))
        template = self.folder / "template.db"
        upgrade(f"sqlite:///{template}")
        self.template = template
        self.count = 0

    def fresh_url(self) -> str:
        self.count += 1
        target = self.folder / f"run-{self.count}.db"
        shutil.copyfile(self.template, target)
        return f"sqlite:///{target}"

    def drop(self, url: str) -> None:
        path = Path(make_url(url).database or "")
        if path.parent != self.folder:
            return  # not one of ours
        for suffix in ("", "-wal", "-shm", "-journal"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class _PostgresDatabases:
    """Databases named after the process and the factory, ``rems_tpl_<pid>_<k>`` and
    ``rems_<pid>_<k>_<n>``: parallel runs on one server, and two factories in one process,
    never collide."""

    def __init__(self, base_url: str) -> None:
        self.url = make_url(base_url)
        if self.url.get_backend_name() != "postgresql":
            raise ValueError("a database factory takes a PostgreSQL URL (or none, for SQLite)")
        self.admin = create_engine(
            self.url, isolation_level="AUTOCOMMIT", poolclass=NullPool, hide_parameters=True
        )
        self.tag = f"{os.getpid()}_{next(_FACTORIES)}"
        self.template = f"rems_tpl_{self.tag}"
        self.made: set[str] = set()
        self.count = 0
        try:
            self._create(self.template)
            upgrade(self._url_of(self.template))
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one worth reading
                self.close()
            raise

    def fresh_url(self) -> str:
        self.count += 1
        name = f"rems_{self.tag}_{self.count}"
        self.made.add(name)
        self._create(name, template=self.template)
        return self._url_of(name)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        if name in self.made:
            self.made.discard(name)
            self._drop(name)

    def close(self) -> None:
        for name in sorted(self.made):
            self._drop(name)
        self.made.clear()
        self._drop(self.template)
        self.admin.dispose()

    def _url_of(self, name: str) -> str:
        return self.url.set(database=name).render_as_string(hide_password=False)

    def _create(self, name: str, template: str | None = None) -> None:
        self._drop(name)  # a leftover of an earlier process that had this pid
        quote = self.admin.dialect.identifier_preparer.quote
        clone = f" TEMPLATE {quote(template)}" if template else ""
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {quote(name)}{clone}")

    def _drop(self, name: str) -> None:
        quote = self.admin.dialect.identifier_preparer.quote
        with self.admin.connect() as conn:
            conn.execute(_TERMINATE, {"name": name})
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quote(name)}")


_FACTORIES = itertools.count(1)
_TERMINATE = text(
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
    " WHERE datname = :name AND pid <> pg_backend_pid()"
)


async def run_file(
    path: Path,
    db_url: str | None,
    packs: PackLibrary,
    via: str = "inprocess",
    live: LiveGateway | LiveFhirGateway | None = None,
) -> FileReport:
    """Run one file: ``via`` inprocess (the application service), mllp or fhir (a real listener
    or endpoint on a loopback port, in this process, on the same database); or, with ``live``, a
    running gateway whose database is ``db_url`` (over FHIR ``db_url`` may be None: unknown)."""
    report = FileReport(path)
    try:
        scenario = load(path)
    except (ScenarioError, OSError) as exc:
        report.error = str(exc)
        report.name = _name_of(path)
        return report
    report.name = scenario.name
    try:
        packs.for_date(scenario.rules, scenario.steps[0].at.date())
    except RulePackError as exc:
        report.error = f"rules: {exc}"
        return report
    except OutOfScope:
        pass  # each step says so for itself
    with _application_on(db_url, packs, scenario) as application:
        await _run_steps(_channel(via, application, scenario, live), scenario, report)
    return report


@contextlib.contextmanager
def _application_on(
    db_url: str | None, packs: PackLibrary, scenario: Scenario
) -> Iterator[Gateway | None]:
    """The application on ``db_url`` for the file's run, with the file's rules and time zone
    (None without a database)."""
    if db_url is None:
        yield None
        return
    with bootstrap(db_url, UnitContext(packs, scenario.rules, scenario.tz)) as application:
        yield application


async def _run_steps(channel: InProcessChannel, scenario: Scenario, report: FileReport) -> None:
    try:
        await channel.open()
        await channel.load_registry()
        for step in scenario.steps:
            try:
                actual = await channel.run(step)
            except NotSupportedYet as exc:
                report.steps.append(StepReport(step, {}, [], skipped=str(exc)))
                continue
            except (ScenarioError, ValueError) as exc:
                report.steps.append(StepReport(step, {}, [f"cannot run: {exc}"]))
                continue
            problems = compare(step.expect, actual)
            if problems:
                problems += [f"hint: {hint}" for hint in channel.hints(step, actual)]
            report.steps.append(StepReport(step, actual, problems))
    except ScenarioError as exc:
        report.error = str(exc)
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
    finally:
        await channel.close()


def _channel(
    via: str,
    application: Gateway | None,
    scenario: Scenario,
    live: LiveGateway | LiveFhirGateway | None,
) -> InProcessChannel:
    if via == "fhir" and isinstance(live, LiveFhirGateway):
        return LiveFhirChannel(application, scenario, live)
    if application is None:
        raise ScenarioError("a database is needed unless the run is --via fhir --fhir URL")
    if isinstance(live, LiveGateway):
        return LiveMllpChannel(application, scenario, live)
    if via == "mllp":
        return MllpChannel(application, scenario)
    if via == "fhir":
        return FhirChannel(application, scenario)
    return InProcessChannel(application, scenario)


def _name_of(path: Path) -> str:
    try:
        return str(read(path).get("name") or "")
    except (ScenarioError, OSError):
        return ""


def summary(actual: dict[str, Any]) -> str:
    """One line of what a step answered, for ``-v``."""
    parts = []
    keys = ("ack", "outcome", "status", "anc", "category", "max_days_supply", "rda", "cards")
    for key in (*keys, "indicator", "summary"):
        if actual.get(key) is not None:
            parts.append(f"{key}={actual[key]}")
    for key in ("reasons", "warnings"):
        if actual.get(key):
            parts.append(f"{key}={sorted(codes(actual[key]))}")
    return " ".join(parts) or "(nothing to report)"


def format_report(report: FileReport, verbose: bool = False) -> str:
    lines = [f"{report.status} {report.path} — {report.name}"]
    if report.error:
        lines.append(f"    error: {report.error}")
    if report.skipped:
        reasons = list(dict.fromkeys(s.skipped for s in report.steps))
        lines.append(f"    every step was skipped: {'; '.join(reasons)}")
    for step in report.steps:
        if step.skipped and report.skipped and not verbose:
            continue  # said once above
        if step.skipped:
            lines.append(f"    {step.step.label}: skipped ({step.skipped})")
        elif verbose:
            mark = "ok  " if not step.problems else "DIFF"
            lines.append(f"    {mark} {step.step.label}: {summary(step.actual)}")
        for problem in step.problems:
            lines.append(f"    {step.step.label}: {problem}")
    return "\n".join(lines)


def summary_line(reports: list[FileReport]) -> str:
    """The run's last line: files passed, failed and skipped (every step skipped: nothing was
    checked, nothing failed — not a pass, and not a failure of the run)."""
    failed = sum(not r.passed for r in reports)
    skipped = sum(r.skipped for r in reports)
    return f"{len(reports) - failed - skipped} passed, {failed} failed, {skipped} skipped"
