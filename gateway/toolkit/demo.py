"""`rems-gateway demo`: a database of its own, the demo registry, a little fixture traffic
through the intake and the FHIR app (the gateway's own paths, in process), and what to try next.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

from gateway.app.bootstrap import Gateway, bootstrap
from gateway.app.context import UnitContext
from gateway.app.values import Source
from gateway.http.app import create_app
from gateway.mllp.intake import Hl7Intake
from gateway.scenarios.fhir_app import gateway_settings
from mappings.hl7v2.senders import SenderDirectory
from mappings.hl7v2.tokenizer import split_batch
from rems_core.registry import registry_from
from rems_core.store.db import upgrade

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
REGISTRY = "registry/example.yaml"
#: (file, clinical time of a FHIR post): ANCs of patient MRN123 of the demo registry, one result
#: of nobody (a bare MRN, held for review), an ANC over FHIR, then an outpatient order.
TRAFFIC = (
    ("hl7/oru-v251-loinc-anc.hl7", None),
    ("hl7/oru-v23-bare-mrn.hl7", None),
    ("fhir/observation-anc-per-uL.json", "2021-12-09T10:00:00Z"),
    ("fhir/medicationrequest-outpatient.json", "2021-12-10T09:00:00Z"),
)
FHIR_JSON = "application/fhir+json"


@contextmanager
def demo_folder(keep: Path | None) -> Iterator[Path]:
    """``keep`` (made if need be, left in place), else a temporary folder removed at the end."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    folder = Path(tempfile.mkdtemp(prefix="rems-demo-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_demo(keep: Path | None) -> list[str]:
    """The demo's lines: what was loaded and sent, and what to open and send next."""
    if not (FIXTURES / REGISTRY).is_file():
        raise FileNotFoundError(f"{FIXTURES}: the demo needs the fixtures of a source checkout")
    with demo_folder(keep) as folder:
        db = f"sqlite:///{(folder / 'demo.db').resolve()}"
        upgrade(db)
        with bootstrap(db, UnitContext()) as gateway:
            lines = [f"demo database: {db}"]
            lines += asyncio.run(_traffic(gateway))
        return lines + _next_steps(db if keep is not None else None)


async def _traffic(gateway: Gateway) -> list[str]:
    doc = registry_from(yaml.safe_load((FIXTURES / REGISTRY).read_text(encoding="utf-8")))
    loaded = await gateway.service.load_registry(doc, Source("cli", "demo"))
    lines = [f"loaded {REGISTRY}: {len(loaded)} patient(s)"]
    intake = Hl7Intake(gateway.service, SenderDirectory(accept_unknown=True), clock="message")
    settings = gateway_settings(gateway, auth="development")
    transport = httpx.ASGITransport(app=create_app(gateway, settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as http:
        for name, at in TRAFFIC:
            path = FIXTURES / name
            if path.suffix == ".hl7":
                data = path.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
                for message in split_batch(data):
                    received = await intake.receive(message)
                    lines.append(
                        f"sent {name} over the intake: {received.code} ({received.disposition})"
                    )
                continue
            kind = path.stem.split("-")[0]
            resource = {"observation": "Observation", "medicationrequest": "MedicationRequest"}
            headers = {
                "Content-Type": FHIR_JSON,
                "Prefer": "return=OperationOutcome",
                "X-Clinical-Time": str(at),
            }
            answer = await http.post(
                f"/fhir/{resource[kind]}", content=path.read_bytes(), headers=headers
            )
            issues = answer.json().get("issue", [])
            said = issues[0].get("diagnostics", "") if issues else ""
            lines.append(f"posted {name} to /fhir: HTTP {answer.status_code} {said}".rstrip())
    return lines


def _next_steps(db: str | None) -> list[str]:
    kept = db or "sqlite:///DIR/demo.db"
    lines = [
        "",
        "next:",
        f"  rems-gateway serve --db {kept} --clock message --auth development",
        "  rems-gateway send fixtures/hl7/oru-v251-analyser-spm-collection.hl7 --to 127.0.0.1:2575",
        "  open http://127.0.0.1:8080/console",
        "  curl -s -H 'Accept: application/fhir+json' "
        "'http://127.0.0.1:8080/fhir/Observation?patient:identifier="
        "urn:oid:2.16.840.1.113883.3.999.1|MRN123'",
        f"  rems-gateway review list --db {kept}",
        f"  rems-gateway explain fixtures/hl7/oru-v23-bare-mrn.hl7 --db {kept}",
    ]
    if db is None:
        lines.insert(1, "")
        lines.insert(2, "the demo database was temporary: `rems-gateway demo --keep DIR` keeps it")
    return lines
