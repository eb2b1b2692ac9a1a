"""Scenario files against a separately running gateway over FHIR (docs/contracts.md §1, `--via fhir
--fhir URL --smart-keys DIR [--db URL]`).

The gateway runs `rems-gateway serve --clock message --smart-clients DIR/smart-clients.yaml`
(DIR made by `rems-gateway scenario clients`); the runner holds DIR's private keys. Per run of a
file, as over MLLP (live.py):

- patients' identifier values and handles, dispense request ids and the file's identifier values
  inside raw `fhir` steps get the run's tag, and so do client Patient ids there (`Patient/{id}`);
- tokens come from the token endpoint named by `URL/.well-known/smart-configuration` (also the
  assertions' `aud`); a prescriber of the file without a client in DIR fails the file first;
- the registry goes through `POST /admin/registry` with the system client's `admin` token, after
  the shared prescribers and pharmacies are compared with `--db` (no `--db`: not compared);
- lab, labs, dispense, psf, sign, fhir and identifying adt steps go over FHIR exactly as
  FhirChannel sends them (an adt step's Patient id has the run's tag), and `tasks` and `draft`
  are read over FHIR as there; `advance_to` through
  `POST /admin/scheduled-work` for this file's patients; other adt steps through the HL7 intake on
  `--db`;
- `derived` and `usable` of lab steps are read from `--db`; without it they are ``NOT_READ``,
  so an `expect` naming them fails saying why. A `sign` step with no QuestionnaireResponse of
  this run to `$sign` goes through the service on `--db`; without it the step is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from gateway.app.bootstrap import Gateway
from gateway.fhir.capability import SITE_EXTENSION
from gateway.scenarios.channel import NotSupportedYet
from gateway.scenarios.fhir import FhirChannel, FhirEndpoint, fhir_id, signer_npis
from gateway.scenarios.file import Scenario, Step
from gateway.scenarios.live import (
    LiveRunError,
    Tagging,
    registry_conflict,
    retag_cx_text,
    run_tag,
    shared_disagreements,
    tagged,
)
from gateway.scenarios.smart import RunnerClients, prescriber_client_id, read_key_folder
from rems_core.rulepack import AUTO

NOT_READ = "not read: give --db, the gateway's database"
DISCOVERY = "/.well-known/smart-configuration"
METADATA = "/fhir/metadata"


@dataclass(frozen=True)
class LiveFhirGateway:
    """A running gateway's base URL (FHIR at `/fhir`), the runner's key folder and, optionally,
    the gateway's database."""

    base_url: str
    keys: Path
    db_url: str | None = None

    @classmethod
    def parse(cls, url: str, keys: Path, db_url: str | None) -> LiveFhirGateway:
        base = url.rstrip("/").removesuffix("/fhir")
        if not base.startswith(("http://", "https://")):
            raise LiveRunError(f"--fhir {url!r}: expected http(s)://HOST:PORT")
        return cls(base, keys, db_url)


def retag_resource(body: Any, tagging: Tagging) -> Any:
    """A raw resource for this run: any `{system, value}` naming a patient identifier value of
    the file gets the tagged value, and each resource's own `identifier` values (request ids,
    accession numbers) get the tag, as dispense request ids do; so do a client Patient's `id`
    and the `Patient/{id}` references and entry urls naming one (ids are one space per gateway:
    each run's client Patients are its own)."""
    if isinstance(body, list):
        return [retag_resource(item, tagging) for item in body]
    if not isinstance(body, dict):
        return body
    copy = {key: retag_resource(item, tagging) for key, item in body.items()}
    if "system" in copy and str(copy.get("value")) in tagging.values:
        copy["value"] = tagging.values[str(copy["value"])]
    if "resourceType" in copy and "identifier" in copy:
        copy["identifier"] = _own_identifiers(copy["identifier"], tagging)
    if copy.get("resourceType") == "Patient" and copy.get("id") is not None:
        copy["id"] = fhir_id(tagging.suffix(str(copy["id"])))
    for key in ("reference", "url"):
        if isinstance(copy.get(key), str) and copy[key].startswith("Patient/"):
            copy[key] = "Patient/" + fhir_id(tagging.suffix(copy[key].removeprefix("Patient/")))
    return copy


def patient_references(body: Any) -> Iterator[str]:
    """Every `{"reference": "Patient/…"}` inside a resource."""
    if isinstance(body, list):
        for item in body:
            yield from patient_references(item)
    elif isinstance(body, dict):
        reference = body.get("reference")
        if isinstance(reference, str) and reference.startswith("Patient/"):
            yield reference
        for item in body.values():
            yield from patient_references(item)


def _own_identifiers(identifiers: Any, tagging: Tagging) -> Any:
    if isinstance(identifiers, list):
        return [_own_identifiers(one, tagging) for one in identifiers]
    if isinstance(identifiers, dict) and "value" in identifiers:
        value = str(identifiers["value"])
        if value not in tagging.values.values():  # not a patient's, tagged already
            return {**identifiers, "value": tagging.suffix(value)}
    return identifiers


class LiveFhirChannel(FhirChannel):
    """FhirChannel against a running gateway, with the runner's clients from DIR."""

    def __init__(
        self, application: Gateway | None, scenario: Scenario, gateway: LiveFhirGateway
    ) -> None:
        live, tagging = tagged(scenario, run_tag(scenario.path))
        super().__init__(application, live, None)  # application None: no --db
        self.tagging: Tagging = tagging
        self.gateway = gateway
        self.references: set[str] = set()  # `Patient/{id}` subjects of this run's raw steps
        self.site: tuple[str | None, str | None] = (None, None)  # the gateway's rules, time zone

    def pid_text(self, text: str) -> str:
        return retag_cx_text(text, self.tagging.values)

    def held_values(self) -> set[str] | None:
        """This run's tagged identifier values, and the `Patient/{id}` references of its raw
        steps (a subject held by reference is a review item carrying the reference)."""
        return set(self.tagging.values.values()) | self.references

    async def open(self) -> None:
        clients = read_key_folder(self.gateway.keys)
        self._require_clients(clients)
        async with httpx.AsyncClient(timeout=30) as http:
            token_url = await discover_token_url(http, self.gateway.base_url)
            self.site = await gateway_site(http, self.gateway.base_url)
        self.endpoint = FhirEndpoint(self.gateway.base_url, token_url, clients)
        await super().open()

    def hints(self, step: Step, actual: dict[str, Any]) -> list[str]:
        """The gateway's own `--rules` and `--timezone` judge every step: when they are not the
        file's, a failed step says so (the answer's pack, and the site the CapabilityStatement
        names)."""
        found = []
        wanted, answered = self.scenario.rules, actual.get("rule_pack")
        site_rules, site_timezone = self.site
        if answered and wanted != AUTO:
            if answered != wanted:
                found.append(
                    f"the gateway answered with rule pack {answered}, and this file's rules are "
                    f"{wanted}: run it against a gateway started with --rules {wanted}"
                )
        elif site_rules is not None and site_rules != wanted:
            found.append(
                f"the gateway runs --rules {site_rules}, and this file's rules are {wanted}: "
                f"run it against a gateway started with --rules {wanted}"
            )
        timezone = str(self.scenario.tz)
        if site_timezone is not None and site_timezone != timezone:
            found.append(
                f"the gateway's time zone is {site_timezone}, and this file's is {timezone}: "
                f"run it against a gateway started with --timezone {timezone}"
            )
        return found

    def _require_clients(self, clients: RunnerClients) -> None:
        missing = [n for n in signer_npis(self.scenario) if n not in clients.prescribers]
        if missing:
            names = ", ".join(prescriber_client_id(n) for n in missing)
            raise LiveRunError(
                f"no SMART client {names} in {self.gateway.keys}: run `rems-gateway scenario "
                "clients` with this file and restart the gateway with its smart-clients.yaml"
            )

    async def _admin(self, path: str, body: dict[str, Any]) -> Any:
        assert self.http is not None and self.tokens is not None and self.clients is not None
        headers = await self.tokens.bearer(self.clients.system)
        response = await self.http.post(path, json=body, headers=headers)
        if response.status_code != 200:
            raise LiveRunError(f"POST {path}: {response.status_code} {response.text}")
        return response.json()

    async def load_registry(self) -> None:
        registry = self.scenario.registry
        if self.application is not None:
            problems = await self.application.writer.run(
                lambda s: shared_disagreements(s, registry)
            )
            if problems:
                raise registry_conflict(problems)
        loaded = await self._admin("/admin/registry", registry.model_dump(mode="json"))
        ids = dict(loaded["patient_ids"])
        self.patient_ids = {h: ids[self.tagging.suffix(h)] for h in self.scenario.handles}
        await self._check_same_database()

    async def _check_same_database(self) -> None:
        if self.application is None or not self.scenario.handles:
            return
        identifiers = next(iter(self.scenario.handles.values()))
        if await self.application.reads.find_patient(list(identifiers)) is None:
            raise LiveRunError("--db is not the database of the gateway at --fhir")

    async def _stored(self, step: Step) -> dict[str, Any]:
        if self.application is None:
            return {"derived": NOT_READ, "usable": NOT_READ}
        return await super()._stored(step)

    async def _dispense(self, step: Step) -> dict[str, Any]:
        request = step.request
        if request.request_id:
            request = replace(request, request_id=self.tagging.suffix(request.request_id))
        return await super()._dispense(replace(step, request=request))

    async def _cancel(self, step: Step) -> dict[str, Any]:
        tagged = replace(step.request, request_id=self.tagging.suffix(step.request.request_id))
        return await super()._cancel(replace(step, request=tagged))

    async def _dispensed(self, step: Step) -> dict[str, Any]:
        tagged = replace(step.request, request_id=self.tagging.suffix(step.request.request_id))
        return await super()._dispensed(replace(step, request=tagged))

    async def _sign(self, step: Step) -> dict[str, Any]:
        _, psf_id = step.request
        nothing_to_sign = self._response_to_sign(str(step.patient), psf_id) is None
        if nothing_to_sign and self.application is None:
            raise NotSupportedYet("no QuestionnaireResponse of this run to $sign: needs --db")
        return await super()._sign(step)

    async def _fhir(self, step: Step) -> dict[str, Any]:
        body = retag_resource(step.body, self.tagging)
        self.references |= set(patient_references(body))
        return await super()._fhir(replace(step, body=body))

    def client_patient_id(self, step: Step) -> str:
        """The run's tag instead of the file's stem: a client Patient of this run's own."""
        return fhir_id(f"scn-{self.tagging.tag}-{step.index}")

    async def _advance_to(self, step: Step) -> dict[str, Any]:
        handles = [step.patient] if step.patient else list(self.scenario.handles)
        ids = [self.patient_ids[h] for h in handles if h in self.patient_ids]
        body = {"until": step.request.isoformat(), "patients": ids}
        found = (await self._admin("/admin/scheduled-work", body))["patients"]
        return {"warnings": [f for findings in found.values() for f in findings]}


async def discover_token_url(http: httpx.AsyncClient, base_url: str) -> str:
    """The gateway's token endpoint, from its SMART discovery document."""
    try:
        response = await http.get(base_url + DISCOVERY)
    except httpx.HTTPError as exc:
        raise LiveRunError(f"no gateway at --fhir {base_url}: {exc}") from None
    if response.status_code != 200:
        raise LiveRunError(
            f"GET {base_url}{DISCOVERY}: HTTP {response.status_code}: "
            "start the gateway with --smart-clients DIR/smart-clients.yaml"
        )
    return str(response.json()["token_endpoint"])


async def gateway_site(http: httpx.AsyncClient, base_url: str) -> tuple[str | None, str | None]:
    """The running gateway's `--rules` and `--timezone`, from its CapabilityStatement's site
    extension; (None, None) when it names none (an older gateway): only the answers' packs
    are compared then."""
    try:
        response = await http.get(base_url + METADATA, headers={"Accept": "application/fhir+json"})
        statement = response.json() if response.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return None, None
    site = next((e for e in statement.get("extension") or () if e.get("url") == SITE_EXTENSION), {})
    values = {part.get("url"): part for part in site.get("extension") or ()}
    rules = values.get("rules", {}).get("valueString")
    timezone = values.get("timezone", {}).get("valueCode")
    return rules, timezone
