"""A CDS hook decides as `$rems-etasu` does (docs/contracts.md §6): every dispense step of every
scenario file, before it is dispensed, is sent both as an `order-sign` hook (the step's order in
draftOrders, the patient's identifiers prefetched) and as `$rems-etasu` with the same
MedicationRequest, at the same clinical time — the card's indicator is the GuidanceResponse's
status, and the requirements its reasons fail are those the GuidanceResponse reports unmet."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app.bootstrap import bootstrap
from gateway.app.context import UnitContext
from gateway.http.app import create_app
from gateway.scenarios.channel import InProcessChannel, NotSupportedYet
from gateway.scenarios.fhir_app import gateway_settings
from gateway.scenarios.fhir_resources import Decimals, medication_request
from gateway.scenarios.file import Scenario, ScenarioError, Step, load
from gateway.scenarios.runner import DatabaseFactory
from mappings.fhir.etasu import REQUIREMENTS
from rems_core.rulepack import PackLibrary
from tests.conftest import run

SCENARIOS = [  # the files with dispense steps
    path
    for path in sorted((Path(__file__).parent.parent / "fixtures" / "scenarios").glob("*.yaml"))
    if "dispense:" in path.read_text()
]
STATUS_INDICATOR = {"success": "info", "data-required": "warning", "failure": "critical"}
REASONS = re.compile(r"\*\*Reasons\*\*\n\n((?:- .*\n?)+)")
CODE = re.compile(r"\(`([A-Z_]+)`\)$")
DECISION = "urn:rems-gateway:fhir:rems-decision"


class ParityChannel(InProcessChannel):
    """The in-process channel, with each dispense step first checked on both channels."""

    def __init__(self, application: Any, scenario: Scenario) -> None:
        super().__init__(application, scenario)
        app = create_app(application, gateway_settings(application, auth="development"))
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://in-process"
        )
        self.compared: list[tuple[int, Any, Any]] = []

    async def _dispense(self, step: Step) -> dict[str, Any]:
        self.compared.append((step.index, *await self.both(step)))
        return await super()._dispense(step)

    async def both(self, step: Step) -> tuple[Any, Any]:
        identifiers = self.identifiers(step.patient)
        numbers = Decimals()
        order = json.loads(numbers.dumps(medication_request(step.request, identifiers[0], numbers)))
        order["id"] = f"order-{step.index}"
        headers = {"X-Clinical-Time": step.at.isoformat()}
        etasu = await self.http.post(
            "/fhir/GuidanceResponse/$rems-etasu",
            json={
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "patient", "valueIdentifier": identifiers[0].__dict__},
                    {"name": "medicationRequest", "resource": order},
                ],
            },
            headers=headers,
        )
        patient = {
            "resourceType": "Patient",
            "id": "ehr-patient",
            "identifier": [{"system": i.system, "value": i.value} for i in identifiers],
        }
        hook = await self.http.post(
            "/cds-services/clozapine-rems-order-sign",
            json={
                "hook": "order-sign",
                "hookInstance": f"parity-{step.index}",
                "context": {
                    "userId": "Practitioner/ehr-user",
                    "patientId": "ehr-patient",
                    "draftOrders": draft_orders(order),
                },
                "prefetch": {"patient": patient},
            },
            headers=headers,
        )
        return etasu_answer(etasu), hook_answer(hook)

    async def close(self) -> None:
        await self.http.aclose()
        await super().close()


def draft_orders(order: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": order}]}


def etasu_answer(response: httpx.Response) -> Any:
    if response.status_code != 200:
        return response.status_code
    guidance = response.json()["parameter"][0]["resource"]
    decision = next(e for e in guidance["extension"] if e["url"] == DECISION)
    parts = decision["extension"]
    outcome = next(p["valueCode"] for p in parts if p["url"] == "outcome")
    if outcome == "not_applicable":
        return "no card"
    requirements = guidance["contained"][0]["parameter"]
    unmet = {
        r["resource"]["id"]
        for r in requirements
        if r["name"] == "requirement" and r["resource"]["status"] != "success"
    }
    return STATUS_INDICATOR[guidance["status"]], unmet


def hook_answer(response: httpx.Response) -> Any:
    if response.status_code != 200:
        return response.status_code
    cards = response.json()["cards"]
    if not cards:
        return "no card"
    (card,) = cards
    found = REASONS.search(card["detail"])
    lines = found.group(1).splitlines() if found else []
    codes = {m.group(1) for line in lines if (m := CODE.search(line))}
    return card["indicator"], {key for key, (_, of, _) in REQUIREMENTS.items() if of & codes}


@pytest.fixture(scope="module")
def databases() -> Any:
    factory = DatabaseFactory()
    yield factory
    factory.close()


async def compare_file(path: Path, url: str) -> list[tuple[int, Any, Any]]:
    scenario = load(path)
    with bootstrap(url, UnitContext(PackLibrary(), scenario.rules, scenario.tz)) as application:
        channel = ParityChannel(application, scenario)
        try:
            await channel.load_registry()
            for step in scenario.steps:
                try:
                    await channel.run(step)
                except (NotSupportedYet, ScenarioError, ValueError):
                    continue  # as the runner reports it: no dispense to compare
        finally:
            await channel.close()
    return channel.compared


def test_every_scenario_dispense_gets_the_same_answer_from_a_hook_and_from_etasu(
    databases: DatabaseFactory,
) -> None:
    compared = 0
    differ = []
    for path in SCENARIOS:
        url = databases.fresh_url()
        try:
            for index, etasu, hook in run(compare_file(path, url)):
                compared += 1
                if etasu != hook:
                    differ.append(f"{path.name} step {index}: $rems-etasu {etasu}, hook {hook}")
        finally:
            databases.drop(url)
    assert differ == []
    assert compared >= 100  # the files' dispense steps
