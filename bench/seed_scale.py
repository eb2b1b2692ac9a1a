"""A health system's history in a gateway database, for the benchmarks at scale (issue 20):
registry patients on clozapine for up to --years, each with the CBCs of the label's schedule
(weekly for 6 months, every 2 weeks to a year, then monthly) sent as ORU^R01, a monthly PSF,
and a monthly RDE^O11 refill decided (with its RDA); their FHIR record, worklist, messages and
audit chain as the gateway itself writes them.

    python bench/seed_scale.py --db URL [--patients 100000] [--years 5] [--smoke]

How: a few template patients (--templates, treatment started from --years ago to a few months
ago) are run through the real application (HL7 intake, RemsService, the single writer) on a
scratch SQLite file, with ids the gateway issues marked. Their rows are then copied into the
target database once per patient, by INSERT … SELECT in the database itself (ids, MRNs and
hashes rewritten per patient; about 1,000 patients per statement), and the audit records are
chained anew in Python (every record's hash covers its predecessor's). Patient k has the MRN
``MRN{k:06d}`` of bench/mllp.py's system, so bench/serve.py's messages for its 200 patients land
on patients with years of history. The disk space the history takes is estimated from the
templates and checked before any copying starts. See bench/README.md "At scale".
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mllp import (  # noqa: E402  (the bench's sender, prescriber, pharmacy and MRN system)
    FAMILY,
    GIVEN,
    MRN_SYSTEM,
    PHARMACY,
    PRESCRIBER,
    SENDERS,
    _cbc,
    _order,
)
from sqlalchemy import (  # noqa: E402
    JSON,
    Column,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    TypeDecorator,
    func,
    insert,
    select,
    text,
    update,
)

from gateway.app.bootstrap import assemble  # noqa: E402
from gateway.app.context import UnitContext  # noqa: E402
from gateway.app.values import Source  # noqa: E402
from gateway.mllp.intake import Hl7Intake  # noqa: E402
from rems_core.audit import AuditEntry, ChainHead, chained, columns  # noqa: E402
from rems_core.model import (  # noqa: E402
    Identifier,
    PatientStatusForm,
    PsfType,
    ReportedAnc,
    SubmitterRole,
)
from rems_core.monitoring import add_months  # noqa: E402
from rems_core.registry import RegistryDocument  # noqa: E402
from rems_core.rulepack import PackLibrary  # noqa: E402
from rems_core.store.db import is_sqlite, make_engine, upgrade  # noqa: E402
from rems_core.store.repo import Store  # noqa: E402
from rems_core.store.tables import SQLModel  # noqa: E402

MARK = "QZX"  # in every id the template run issues: rewritten per patient
NAME_MARK = "Qzxname"
#: Rows of the whole gateway, not of one patient: made once, by the registry load of the target.
GLOBAL_TABLES = {
    "alembic_version",
    "audit_head",
    "audit_record",  # chained anew in Python
    "designee",
    "designee_attachment",
    "pharmacy",
    "pharmacy_enrollment",
    "prescriber",
    "scheduler_lease",
    "site_setting",
    "trade_partner",
    "trade_partner_identifier",
}
CLONES_PER_STATEMENT = 1000
SMOKE = {"patients": 400, "history": 200, "years": 1, "templates": 3}


class MarkedIds:
    """The template run's ids: ``MARK`` and a counter, so that copies can make them their own."""

    def __init__(self) -> None:
        self._next = itertools.count(1)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{MARK}{next(self._next):06d}"

    def rda_number(self) -> str:
        return f"RDA-{MARK}{next(self._next):06d}"


class Clock:
    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.at


# --- the template patients, through the real application ----------------------------------------


def template_patient(t: int) -> int:
    """The bench/mllp.py patient number a template runs as (MRN999990…); 999990 % 3 == 0, so
    templates 0 and 3 also carry an enterprise id in PID-3, as a third of the bench's do."""
    return 999990 + t


def draw_days(start: date, today: date) -> list[date]:
    """The label's ANC schedule from the treatment start: weekly for 6 months, every 2 weeks to
    12 months, monthly after (the days a CBC is drawn, up to yesterday)."""
    days, day = [], start + timedelta(days=1)
    while day < today:
        days.append(day)
        weeks = (day - start).days / 7
        day += timedelta(weeks=1 if weeks < 26 else 2 if weeks < 52 else 4)
    return days


def _days(start: date, end: date) -> Iterator[date]:
    day = start
    while day < end:
        yield day
        day += timedelta(days=1)


def parties() -> RegistryDocument:
    return RegistryDocument.model_validate(
        {
            "prescribers": [{"npi": PRESCRIBER, "certified": True, "name": "Ann Lee"}],
            "pharmacies": [
                {"npi": PHARMACY, "enrollments": [{"setting": "outpatient", "certified": True}]}
            ],
        }
    )


def template_registry(t: int, start: date) -> RegistryDocument:
    patient = template_patient(t)
    doc = parties().model_dump(mode="json")
    doc["patients"] = [
        {
            "id": f"{MARK}H{t}",
            "identifiers": [{"system": f"urn:oid:{MRN_SYSTEM}", "value": f"MRN{patient:06d}"}],
            "name": {"family": NAME_MARK, "given": NAME_MARK.lower()},
            "birth_date": "1971-04-09",
            "sex": "FM"[t % 2],
            "designation": "general",
            "treatment_start": start.isoformat(),
            "enrollment": {
                "by": PRESCRIBER,
                "date": start.isoformat(),
                "anc": {
                    "value": "2600",
                    "unit": "/uL",
                    "drawn": (start - timedelta(days=2)).isoformat(),
                },
            },
        }
    ]
    return RegistryDocument.model_validate(doc)


async def run_template(url: str, t: int, start: date, today: date) -> int:
    """One patient's history from ``start`` to today through the application; returns the
    audit seq after the parties were loaded (the patient's records come after it)."""
    clock, rng = Clock(), random.Random(t)
    ctx = UnitContext(PackLibrary(), ids=MarkedIds(), now=clock)
    engine = make_engine(url)
    application = assemble(engine, ctx)
    service, source = application.service, Source("bench-seed", "seed_scale")
    try:
        clock.at = datetime.combine(start, datetime.min.time(), UTC) - timedelta(days=3)
        await service.load_registry(parties(), source)
        with engine.connect() as conn:
            mark = Store(conn).chain_head().seq
        await service.load_registry(template_registry(t, start), source)
        intake = Hl7Intake(service, SENDERS)
        patient = template_patient(t)
        mrn = [Identifier(f"urn:oid:{MRN_SYSTEM}", f"MRN{patient:06d}")]
        draws = dict.fromkeys(draw_days(start, today))
        due = add_months(start, 1)  # the enrollment is the first accepted PSF
        for n, day in enumerate(_days(start, today)):
            midnight = datetime.combine(day, datetime.min.time(), UTC)
            clock.at = midnight + timedelta(hours=6)  # the scheduler's daily run
            await service.run_scheduled(clock.at)
            if day not in draws:
                continue
            drawn = midnight + timedelta(hours=13)
            clock.at = drawn + timedelta(hours=1)
            anc = rng.randrange(1800, 6500, 10)  # a patient whose counts stay normal
            marked = f"{MARK}{n:05d}"  # the order and accession numbers
            cbc = _cbc(f"{MARK}C{n:05d}", marked, patient, drawn, rng, anc)  # type: ignore[arg-type]
            await intake.receive(cbc.encode("ascii"), clock.at)
            if day >= due - timedelta(days=7):  # the draft is out: the prescriber files the PSF
                due = add_months(day, 1)
                await monthly_psf(service, mrn, drawn, anc, source, clock)
                clock.at = drawn + timedelta(days=1)
                order = _order(f"{MARK}R{n:05d}", n, patient, clock.at, rng, placer=marked)
                await intake.receive(order.encode("ascii"), clock.at)
    finally:
        application.writer.stop()
        engine.dispose()
    return mark


async def monthly_psf(
    service: Any,
    mrn: list[Identifier],
    drawn: datetime,
    anc: int,
    source: Source,
    clock: Clock,
) -> None:
    """The prescriber's monthly PSF with the day's ANC, signed."""
    clock.at = drawn + timedelta(hours=5)
    form = PatientStatusForm(
        type=PsfType.MONTHLY,
        submitted_at=clock.at,
        submitter=PRESCRIBER,
        role=SubmitterRole.PRESCRIBER,
        prescriber_npi=PRESCRIBER,
        anc=(ReportedAnc(str(anc), "/uL", drawn),),
        signed=True,
    )
    await service.submit_psf(mrn, form, source)


@dataclass
class Template:
    """One template patient's rows, by table, and its audit records."""

    number: int
    mrn: str
    enterprise_id: str
    rows: dict[str, list[dict[str, Any]]]
    audit: list[AuditEntry]

    @property
    def row_count(self) -> int:
        return sum(len(rows) for rows in self.rows.values()) + len(self.audit)


def make_template(folder: Path, t: int, start: date, today: date) -> tuple[Template, int]:
    """The template patient's rows and the bytes its SQLite file grew by."""
    path = folder / f"template-{t}.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    empty = path.stat().st_size
    mark = asyncio.run(run_template(url, t, start, today))
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = {
                name: [dict(r._mapping) for r in conn.execute(select(table))]
                for name, table in SQLModel.metadata.tables.items()
                if name not in GLOBAL_TABLES
            }
            audit = [e for e in Store(conn).audit_records() if e.seq > mark]
    finally:
        engine.dispose()  # the last connection closed: the WAL is checkpointed into the file
    patient = template_patient(t)
    template = Template(
        t, f"MRN{patient:06d}", f"E{patient:07d}", {k: v for k, v in rows.items() if v}, audit
    )
    return template, path.stat().st_size - empty


# --- the copies, in the target database ---------------------------------------------------------


def clone_table(name: str) -> str:
    return f"seed_clone_{name}"


def hash_columns(rows: list[dict[str, Any]]) -> set[str]:
    """Columns whose every value is a sha256 hex digest: rewritten per patient (content hashes
    are looked up; 100,000 patients must not share one)."""
    names = set()
    for column in rows[0]:
        values = [r[column] for r in rows]
        if all(isinstance(v, str) and len(v) == 64 and _hex(v) for v in values):
            names.add(column)
    return names


def _hex(value: str) -> bool:
    try:
        int(value, 16)
    except ValueError:
        return False
    return True


class Copier:
    """Copies the template's rows once per patient with one INSERT … SELECT per table: the
    template rows in ``seed_clone_<table>``, the patients' substitutions in ``seed_patients``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.postgres = not is_sqlite(str(engine.url))
        self.meta = MetaData()
        self.patients = Table(
            "seed_patients",
            self.meta,
            *(Column(n, String) for n in ("code", "mrn", "eid", "hash_prefix", "family", "given")),
        )

    def copy(self, template: Template, numbers: list[int]) -> None:
        with self.engine.begin() as conn:
            self.patients.drop(conn, checkfirst=True)
            self.patients.create(conn)
            for name, rows in template.rows.items():
                source = SQLModel.metadata.tables[name]
                staged = Table(  # the columns alone: no keys, no indexes
                    clone_table(name), MetaData(), *(Column(c.name, c.type) for c in source.columns)
                )
                staged.drop(conn, checkfirst=True)
                staged.create(conn)
                conn.execute(insert(staged), rows)
            for chunk in _chunks(numbers, CLONES_PER_STATEMENT):
                conn.execute(self.patients.delete())
                conn.execute(insert(self.patients), [_substitutes(k) for k in chunk])
                for name, rows in template.rows.items():
                    self._insert_copies(conn, name, rows, template)
            for name in template.rows:
                conn.exec_driver_sql(f"DROP TABLE {clone_table(name)}")
            self.patients.drop(conn)

    def _insert_copies(self, conn: Any, name: str, rows: list[dict[str, Any]], t: Template) -> None:
        target = SQLModel.metadata.tables[name]
        hashes = hash_columns(rows)
        names, expressions = [], []
        for column in target.columns:
            if column.primary_key and isinstance(column.type, Integer) and column.autoincrement:
                continue  # the database numbers the copies
            names.append(column.name)
            expressions.append(self._expression(column, hashes, t))
        statement = (
            f"INSERT INTO {name} ({', '.join(names)}) SELECT {', '.join(expressions)} "
            f"FROM {clone_table(name)} AS t CROSS JOIN seed_patients AS p"
        )
        conn.exec_driver_sql(statement)

    def _expression(self, column: Any, hashes: set[str], t: Template) -> str:
        ref = f"t.{column.name}"
        if column.name in hashes:
            return f"p.hash_prefix || substr({ref}, 7)"
        kind = column.type
        if isinstance(kind, TypeDecorator):  # SQLModel's AutoString, our UtcDateTime
            kind = kind.impl_instance
        if isinstance(kind, JSON):
            as_text = f"CAST({ref} AS TEXT)" if self.postgres else ref
            rewritten = self._rewritten(as_text, t)
            return f"CAST({rewritten} AS JSON)" if self.postgres else rewritten
        if isinstance(kind, LargeBinary):
            if self.postgres:
                latin1 = self._rewritten(f"convert_from({ref}, 'LATIN1')", t)
                return f"convert_to({latin1}, 'LATIN1')"
            return f"CAST({self._rewritten(f'CAST({ref} AS TEXT)', t)} AS BLOB)"
        if isinstance(kind, String):
            return self._rewritten(ref, t)
        return ref

    @staticmethod
    def _rewritten(value: str, t: Template) -> str:
        for old, new in (
            (MARK, "p.code"),
            (t.mrn, "p.mrn"),
            (t.enterprise_id, "p.eid"),
            (NAME_MARK, "p.family"),
            (NAME_MARK.lower(), "p.given"),
        ):
            value = f"replace({value}, '{old}', {new})"
        return value


def _substitutes(k: int) -> dict[str, str]:
    rng = random.Random(k)
    return {
        "code": f"S{k:06d}x",
        "mrn": f"MRN{k:06d}",
        "eid": f"E{k:07d}",
        "hash_prefix": f"{k:06x}",
        "family": rng.choice(FAMILY),
        "given": rng.choice(GIVEN),
    }


def _chunks(values: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


# --- the audit chain, anew --------------------------------------------------------------------


def chain_copies(engine: Engine, plan: list[tuple[Template, list[int]]]) -> int:
    """Every patient's audit records, rewritten as its rows were, appended to the chain in
    order; the head moved once at the end. Returns the records written."""
    audit_t = SQLModel.metadata.tables["audit_record"]
    head_t = SQLModel.metadata.tables["audit_head"]
    written = 0
    with engine.begin() as conn:
        seq, hash_ = conn.execute(select(head_t.c.seq, head_t.c.hash)).one()
        head = ChainHead(seq, hash_)
        batch: list[dict[str, Any]] = []
        for template, numbers in plan:
            rewrite = _audit_rewriter(template)
            for k in numbers:
                for entry in template.audit:
                    record = chained(rewrite(entry, _substitutes(k)), head)
                    head = ChainHead(record.seq, record.hash)
                    batch.append(columns(record))
                if len(batch) >= 20_000:
                    conn.execute(insert(audit_t), batch)
                    written += len(batch)
                    batch = []
        if batch:
            conn.execute(insert(audit_t), batch)
            written += len(batch)
        conn.execute(update(head_t).where(head_t.c.id == 1).values(seq=head.seq, hash=head.hash))
    return written


def _audit_rewriter(t: Template) -> Callable[[AuditEntry, dict[str, str]], AuditEntry]:
    def rewrite(entry: AuditEntry, p: dict[str, str]) -> AuditEntry:
        def text_of(value: str) -> str:
            return (
                value.replace(MARK, p["code"])
                .replace(t.mrn, p["mrn"])
                .replace(t.enterprise_id, p["eid"])
            )

        input_hash = p["hash_prefix"] + entry.input_hash[6:]
        return replace(
            entry,
            subject=text_of(entry.subject) if entry.subject else entry.subject,
            input_ref=text_of(entry.input_ref),
            input_hash=input_hash,
            reasons=tuple(text_of(r) for r in entry.reasons),
            warnings=tuple(text_of(w) for w in entry.warnings),
        )

    return rewrite


# --- the run ------------------------------------------------------------------------------------


def free_bytes(engine: Engine, url: str) -> int | None:
    """Free space where the database's files are (PostgreSQL: its data directory, when this
    machine can see it)."""
    if is_sqlite(url):
        folder = Path(engine.url.database or ".").resolve().parent
    else:
        with engine.connect() as conn:
            folder = Path(conn.execute(text("SHOW data_directory")).scalar_one())
        if not folder.exists():
            return None
    return shutil.disk_usage(folder).free


def plan_clones(
    templates: list[Template], patients: int, history: int
) -> list[tuple[Template, list[int]]]:
    """Patient k < ``history`` is a copy of template k % (templates with history); the rest of
    the registry copies the last template, a patient enrolled days ago."""
    with_history = templates[:-1]
    plan = [(t, list(range(t.number, history, len(with_history)))) for t in with_history]
    return [*plan, (templates[-1], list(range(history, patients)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="the target database (migrated if new)")
    parser.add_argument("--patients", type=int, default=100_000, help="registry patients")
    parser.add_argument(
        "--history",
        type=int,
        help="how many of them have --years of history (default: all); the others were "
        "enrolled days ago",
    )
    parser.add_argument("--years", type=float, default=5.0)
    parser.add_argument("--templates", type=int, default=6, help="treatment lengths (patients)")
    parser.add_argument("--smoke", action="store_true", help="400 patients, 200 with 1 year")
    parser.add_argument("--yes", action="store_true", help="fill a database that has patients")
    args = parser.parse_args()
    if args.smoke:
        for name, value in SMOKE.items():
            setattr(args, name, value)
    started = time.perf_counter()
    today = datetime.now(UTC).date()
    upgrade(args.db)
    engine = make_engine(args.db)
    try:
        fill(engine, args, today, started)
    finally:
        engine.dispose()


def fill(engine: Engine, args: argparse.Namespace, today: date, started: float) -> None:
    with engine.connect() as conn:
        existing = conn.execute(text("SELECT count(*) FROM patient")).scalar_one()
    if existing and not args.yes:
        sys.exit(f"seed_scale: {args.db} has {existing} patients already (--yes to add more)")
    days = args.years * 365.25
    history = args.patients if args.history is None else min(args.history, args.patients)
    starts = [
        today - timedelta(days=days * (args.templates - t) / args.templates)
        for t in range(args.templates)
    ]
    starts.append(today - timedelta(days=3))  # the newly enrolled
    with tempfile.TemporaryDirectory(prefix="rems-seed-") as folder:
        templates, sizes = [], []
        for t, start in enumerate(starts):
            template, size = make_template(Path(folder), t, start, today)
            templates.append(template)
            sizes.append(size)
            print(
                f"template {t}: treatment from {start}, {template.row_count} rows, "
                f"{size / 1e6:.1f} MB in SQLite"
            )
    plan = plan_clones(templates, args.patients, history)
    estimate = sum(size * len(numbers) for size, (_, numbers) in zip(sizes, plan, strict=True))
    free = free_bytes(engine, args.db)
    print(
        f"estimated size: {estimate / 1e9:.1f} GB for {args.patients} patients"
        + (f"; {free / 1e9:.1f} GB free" if free is not None else "; free space not visible")
    )
    if free is not None and estimate * 1.3 > free:
        sys.exit("seed_scale: not enough disk space (the estimate and 30 % for indexes)")
    load_parties(engine)
    copier = Copier(engine)
    for template, numbers in plan:
        step = time.perf_counter()
        copier.copy(template, numbers)
        print(
            f"template {template.number}: {len(numbers)} patients copied "
            f"({template.row_count - len(template.audit)} rows each) "
            f"in {time.perf_counter() - step:.0f} s"
        )
    step = time.perf_counter()
    written = chain_copies(engine, plan)
    print(f"audit chain: {written} records in {time.perf_counter() - step:.0f} s")
    analyze(engine)
    print(f"done in {time.perf_counter() - started:.0f} s")
    print_counts(engine)


def load_parties(engine: Engine) -> None:
    """The target's prescriber and pharmacy, loaded as the gateway loads a registry."""
    application = assemble(engine, UnitContext(PackLibrary()))
    try:
        asyncio.run(application.service.load_registry(parties(), Source("bench-seed")))
    finally:
        application.writer.stop()


def analyze(engine: Engine) -> None:
    """Fresh planner statistics, as autovacuum / `ANALYZE` would have after years of writes."""
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")


def print_counts(engine: Engine) -> None:
    with engine.connect() as conn:
        for name in (
            "patient",
            "observation",
            "anc_result",
            "hl7_message",
            "fhir_resource",
            "psf",
            "decision",
            "rda",
            "monitoring_task",
            "audit_record",
        ):
            table = SQLModel.metadata.tables[name]
            count = conn.execute(select(func.count()).select_from(table)).scalar()
            print(f"  {name:16} {count:>12,}")


if __name__ == "__main__":
    main()
