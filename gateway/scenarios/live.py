"""Scenario files against a separately running gateway (docs/contracts.md §1, `--via mllp --mllp`).

The gateway runs `rems-gateway serve --clock message` on its own database; the runner is given
its MLLP address and the same database (`--db`), and optionally its HTTP base (`--gateway`) for
the admin operations. Per run of a file:

- every patient's identifier values and handle get a tag (``-<file hash><run nonce>``), so files,
  and one file run twice, never meet in the shared database; dispense request ids get it too;
- prescribers and pharmacies are shared: the file must agree with what the database holds
  (checked before anything is loaded), then loading them again changes nothing;
- lab steps go as ORU^R01 from the runner's sender identity, with CX-4 ``&<oid>&ISO`` for
  ``urn:oid:`` systems (other systems: CX-4.1 is the system text, which the gateway's senders
  file must map); raw hl7 steps go as written, with the file's identifier values in PID-2/3/4,
  MRG-1 and MSH-10 tagged; `pid`/`mrg` texts of lab and adt steps get every CX-1 value tagged
  (known to the registry or not), and `held` counts only this run's tagged values. The
  gateway's own senders file applies, not the file's `sender`;
- adt steps go as ADT messages over MLLP; review steps through the service on the database;
- dispense, psf and sign steps go through the application service on the database, where
  `tasks` and `draft` are read;
  ``advance_to`` runs scheduled work for this file's patients only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import secrets
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import inspect, make_url

from gateway.app.bootstrap import Gateway
from gateway.mllp.client import send
from gateway.scenarios.file import AdtStep, ReviewStep, Scenario, ScenarioError, Step, pid_values
from gateway.scenarios.mllp import SENDER, Hl7Channel
from mappings.hl7v2.senders import SenderConfig
from mappings.hl7v2.tokenizer import HL7ParseError, escape, parse, unescape
from rems_core.model import Identifier, Pharmacy, PharmacyEnrollment, Prescriber
from rems_core.registry import EnrollmentEntry, PharmacyEntry, PrescriberEntry, RegistryDocument
from rems_core.store.db import make_engine
from rems_core.store.repo import Store

OID_PREFIX = "urn:oid:"
CX_FIELDS = {"PID": (2, 3, 4), "MRG": (1, 4)}  # the identifier fields a sender writes


class LiveRunError(ScenarioError):
    """The file cannot run against this gateway (e.g. it disagrees about a shared prescriber)."""


@dataclass(frozen=True)
class LiveGateway:
    """Where the running gateway is: MLLP, its database, and optionally its HTTP admin API."""

    mllp_host: str
    mllp_port: int
    db_url: str
    http_url: str | None = None
    admin_token: str | None = None
    sender: tuple[str, str] = SENDER  # MSH-3, MSH-4 of the runner's ORU messages

    @classmethod
    def parse(cls, mllp: str, db_url: str, **options: Any) -> LiveGateway:
        host, _, port = mllp.rpartition(":")
        if not port.isdigit():
            raise LiveRunError(f"--mllp {mllp!r}: expected HOST:PORT")
        return cls(host or "127.0.0.1", int(port), db_url, **options)


def parse_sender(text: str) -> tuple[str, str]:
    application, _, facility = text.partition("|")
    if not application:
        raise LiveRunError(f"--sender {text!r}: expected APP|FACILITY")
    return application, facility


def run_tag(path: Path) -> str:
    """12 hex digits: 4 of the file (name and content), 8 of this run."""
    digest = hashlib.sha256(path.name.encode() + b"\0" + path.read_bytes()).hexdigest()
    return digest[:4] + secrets.token_hex(4)


def schema_problem(db_url: str) -> str | None:
    """Why ``db_url`` is not a gateway's database (None when it is)."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        return f"{url.database}: no such database file: give --db of the running gateway"
    engine = make_engine(db_url)
    try:
        if not inspect(engine).has_table("patient"):
            return f"{db_url} has no gateway schema: give --db of the running gateway"
    except Exception as exc:
        return f"cannot open --db: {type(exc).__name__}: {exc}"
    finally:
        engine.dispose()
    return None


# --- tagging ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tagging:
    """The file's patients, renamed for one run."""

    tag: str
    values: dict[str, str]  # original identifier value → tagged value

    def suffix(self, text: str) -> str:
        return f"{text}-{self.tag}"


def tagged(scenario: Scenario, tag: str) -> tuple[Scenario, Tagging]:
    """The scenario with tagged patient handles and identifier values (steps keep the file's
    handles: the channel resolves them to the tagged identifiers)."""
    tagging = Tagging(tag, {})
    patients = []
    for entry in scenario.registry.patients:
        data = entry.model_dump()
        for identifier in data["identifiers"]:
            tagging.values[identifier["value"]] = tagging.suffix(identifier["value"])
            identifier["value"] = tagging.values[identifier["value"]]
        if entry.id is not None:
            data["id"] = tagging.suffix(entry.id)
        patients.append(data)
    for value in step_values(scenario):  # identifiers as senders write them, known or not
        tagging.values.setdefault(value, tagging.suffix(value))
    registry = RegistryDocument.model_validate(
        {**scenario.registry.model_dump(), "patients": patients}
    )
    handles = {
        handle: [Identifier(i.system, tagging.values[i.value]) for i in identifiers]
        for handle, identifiers in scenario.handles.items()
    }
    return replace(scenario, registry=registry, handles=handles), tagging


def step_values(scenario: Scenario) -> list[str]:
    """CX-1 values the steps write themselves: `pid` of lab steps, `pid`/`mrg` of adt steps,
    a review step's PID-3 text (not a handle) and `identifier`."""
    values: list[str] = []
    for step in scenario.steps:
        texts: list[str | None] = [step.pid]
        if isinstance(step.request, AdtStep):
            texts += [step.request.pid, step.request.mrg]
        elif isinstance(step.request, ReviewStep):
            act = step.request
            if act.target not in scenario.handles:
                texts.append(act.target)
            if act.identifier is not None:
                texts.append(act.identifier.value)
        values += [v for text in texts if text for v in pid_values(text)]
    return list(dict.fromkeys(values))


def retag_cx_text(text: str, values: dict[str, str]) -> str:
    """A PID-3 (or MRG-1) text of a step with its CX-1 values tagged (default delimiters)."""
    repetitions = []
    for cx in text.split("~"):
        value, sep, rest = cx.partition("^")
        repetitions.append(values.get(value.strip(), value) + sep + rest)
    return "~".join(repetitions)


def retag_pid3(message: str, values: dict[str, str]) -> str:
    """The message with PID-3 CX-1 values of the file replaced by their tagged values, each
    segment rebuilt with the message's own delimiters."""
    try:
        encoding = parse(message).encoding
    except HL7ParseError:
        return message  # sent as it is: the gateway answers it
    segments = message.split("\r")
    for n, segment in enumerate(segments):
        name = segment[:3]
        if name not in CX_FIELDS or not segment.startswith(name + encoding.field):
            continue
        fields = segment.split(encoding.field)
        for index in CX_FIELDS[name]:
            if len(fields) > index:
                fields[index] = encoding.repetition.join(
                    _retag_cx(cx, values, encoding)
                    for cx in fields[index].split(encoding.repetition)
                )
        segments[n] = encoding.field.join(fields)
    return "\r".join(segments)


def _retag_cx(cx: str, values: dict[str, str], encoding: Any) -> str:
    components = cx.split(encoding.component)
    value = unescape(components[0], encoding)
    if value in values:
        components[0] = escape(values[value], encoding)
    return encoding.component.join(components)


def retag_control_id(message: str, tag: str) -> str:
    """MSH-10 with the run's tag: a control id of a file is new in every run (a leading byte
    order mark stays where it is)."""
    bom = "\ufeff" if message.startswith("\ufeff") else ""
    lines = message.removeprefix(bom).split("\r")
    if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 4:
        return message
    fields = lines[0].split(lines[0][3])  # fields[n - 1] is MSH-n
    if len(fields) > 9 and fields[9]:
        fields[9] = f"{fields[9]}-{tag}"
    lines[0] = lines[0][3].join(fields)
    return bom + "\r".join(lines)


# --- shared prescribers and pharmacies ----------------------------------------------------------


def shared_disagreements(store: Store, doc: RegistryDocument) -> list[str]:
    """How the file's prescribers and pharmacies differ from those the database holds."""
    prescribers = store.prescribers(p.npi for p in doc.prescribers)
    pharmacies = store.pharmacies(p.npi for p in doc.pharmacies)
    problems = []
    for entry in doc.prescribers:
        if entry.npi in prescribers:
            problems += _differences(
                f"prescriber {entry.npi}", _prescriber_fields(entry), prescribers[entry.npi]
            )
    for pharmacy in doc.pharmacies:
        if pharmacy.npi in pharmacies:
            problems += _differences(
                f"pharmacy {pharmacy.npi}", _pharmacy_fields(pharmacy), pharmacies[pharmacy.npi]
            )
    return problems


def _prescriber_fields(entry: PrescriberEntry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "certified": entry.certified,
        "certified_on": entry.certified_on,
        "dea": entry.dea,
        "email": entry.email,
        "designees": sorted((d.id, d.name) for d in entry.designees),
    }


def _pharmacy_fields(entry: PharmacyEntry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "ncpdp": entry.ncpdp,
        "enrollments": sorted(_enrollment(e) for e in entry.enrollments),
    }


def _enrollment(e: EnrollmentEntry | PharmacyEnrollment) -> tuple[Any, ...]:
    return (e.setting.value, e.certified, e.certified_on, e.recertify_by)


def _held(record: Prescriber | Pharmacy) -> dict[str, Any]:
    held = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    if isinstance(record, Prescriber):
        held["designees"] = sorted((d.id, d.name) for d in record.designees)
    else:
        held["enrollments"] = sorted(_enrollment(e) for e in record.enrollments)
    return held


def _differences(subject: str, wanted: dict[str, Any], record: Prescriber | Pharmacy) -> list[str]:
    held = _held(record)
    return [
        f"{subject}: {key} is {shown(value)} in this file, {shown(held[key])} in the database"
        for key, value in wanted.items()
        if held[key] != value
    ]


def shown(value: Any) -> str:
    """A registry value as the file would write it: dates in ISO 8601, names quoted, a
    designee as `id "name"`, an enrollment as `setting certified on … recertify by …`."""
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_item(item) for item in value) + "]" if value else "none"
    return str(value)


def _item(item: Any) -> str:
    if isinstance(item, tuple) and len(item) == 2:  # a designee: (id, name)
        return f"{item[0]} {shown(item[1])}"
    if isinstance(item, tuple):  # an enrollment: (setting, certified, certified_on, recertify_by)
        setting, certified, certified_on, recertify_by = item
        text = f"{setting} {'certified' if certified else 'not certified'}"
        if certified_on is not None:
            text += f" on {shown(certified_on)}"
        if recertify_by is not None:
            text += f" recertify by {shown(recertify_by)}"
        return text
    return shown(item)


def registry_conflict(problems: list[str]) -> LiveRunError:
    """The file cannot share the gateway's database: what differs, and how to go on."""
    return LiveRunError(
        "the file disagrees with the gateway's registry about shared records: "
        + "; ".join(problems)
        + ". Nothing was loaded. Run it against a fresh database (a new --db, with a gateway on "
        "it), or make the file's prescribers and pharmacies agree with the database's (the "
        "registry loaded first, e.g. fixtures/registry/example.yaml, sets them)"
    )


# --- the channel --------------------------------------------------------------------------


class LiveMllpChannel(Hl7Channel):
    """Lab and hl7 steps to a running gateway over MLLP; the rest through the service on its
    database; the registry and scheduled work through its admin API when ``http_url`` is set."""

    def __init__(self, application: Gateway, scenario: Scenario, gateway: LiveGateway) -> None:
        live, tagging = tagged(scenario, run_tag(scenario.path))
        sender = SenderConfig(
            application=gateway.sender[0],
            facility=gateway.sender[1],
            assigning_authorities=_namespaces(live),
        )
        super().__init__(application, live, sender)
        self.tagging = tagging
        self.gateway = gateway
        self.control_prefix = f"S{tagging.tag}"
        self.http: httpx.AsyncClient | None = None

    @property
    def tag(self) -> str:
        return self.tagging.tag

    def pid_text(self, text: str) -> str:
        return retag_cx_text(text, self.tagging.values)

    def held_values(self) -> set[str] | None:
        return set(self.tagging.values.values())

    async def open(self) -> None:
        await self._reach_mllp()
        if self.gateway.http_url:
            token = self.gateway.admin_token
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            self.http = httpx.AsyncClient(
                base_url=self.gateway.http_url, headers=headers, timeout=30
            )

    async def _reach_mllp(self) -> None:
        address = f"{self.gateway.mllp_host}:{self.gateway.mllp_port}"
        try:
            _, writer = await asyncio.open_connection(
                self.gateway.mllp_host, self.gateway.mllp_port
            )
        except OSError as exc:
            raise LiveRunError(f"no MLLP listener at {address}: {exc.strerror or exc}") from None
        writer.close()
        await writer.wait_closed()

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()

    async def load_registry(self) -> None:
        registry = self.scenario.registry
        problems = await self._application().writer.run(lambda s: shared_disagreements(s, registry))
        if problems:
            raise registry_conflict(problems)
        loaded = await (self._post_registry() if self.http else self._load_through_service())
        self.patient_ids = {
            handle: loaded[self.tagging.suffix(handle)] for handle in self.scenario.handles
        }
        await self._check_same_database()

    async def _load_through_service(self) -> dict[str, str]:
        from gateway.scenarios.channel import SOURCE

        return await self.service.load_registry(self.scenario.registry, SOURCE)

    async def _post_registry(self) -> dict[str, str]:
        assert self.http is not None
        body = self.scenario.registry.model_dump(mode="json")
        response = await self.http.post("/admin/registry", json=body)
        if response.status_code != 200:
            raise LiveRunError(f"POST /admin/registry: {response.status_code} {response.text}")
        return dict(response.json()["patient_ids"])

    async def _check_same_database(self) -> None:
        """The patients the gateway loaded must be in --db: else the two are not one database."""
        if not self.http or not self.scenario.handles:
            return
        identifiers = next(iter(self.scenario.handles.values()))
        found = await self.reads.find_patient(list(identifiers))
        if found is None:
            raise LiveRunError("--db is not the database of the gateway at --gateway")

    async def _exchange(self, message: str) -> str:
        (ack,) = await send(
            self.gateway.mllp_host, self.gateway.mllp_port, [message.encode("utf-8")]
        )
        return ack.decode("utf-8")

    def outgoing(self, message: str) -> str:
        return retag_control_id(retag_pid3(message, self.tagging.values), self.tag)

    async def _dispense(self, step: Step) -> dict[str, Any]:
        request = step.request
        if request.request_id:
            request = replace(request, request_id=f"{request.request_id}-{self.tag}")
        return await super()._dispense(replace(step, request=request))

    async def _cancel(self, step: Step) -> dict[str, Any]:
        tagged = replace(step.request, request_id=f"{step.request.request_id}-{self.tag}")
        return await super()._cancel(replace(step, request=tagged))

    async def _dispensed(self, step: Step) -> dict[str, Any]:
        tagged = replace(step.request, request_id=f"{step.request.request_id}-{self.tag}")
        return await super()._dispensed(replace(step, request=tagged))

    async def _advance_to(self, step: Step) -> dict[str, Any]:
        if self.http is None:
            return await super()._advance_to(step)
        handles = [step.patient] if step.patient else list(self.scenario.handles)
        ids = [self.patient_ids[h] for h in handles if h in self.patient_ids]
        body = {"until": step.request.isoformat(), "patients": ids}
        response = await self.http.post("/admin/scheduled-work", json=body)
        if response.status_code != 200:
            raise LiveRunError(
                f"POST /admin/scheduled-work: {response.status_code} {response.text}"
            )
        found = response.json()["patients"]
        return {"warnings": [f for findings in found.values() for f in findings]}


def _namespaces(scenario: Scenario) -> dict[str, str]:
    """CX-4.1 → system for the file's systems that are not OIDs: the namespace is the system's
    own text, and the gateway's senders file must map it the same way."""
    systems = {i.system for ids in scenario.handles.values() for i in ids}
    return {s: s for s in sorted(systems) if not s.startswith(OID_PREFIX)}
