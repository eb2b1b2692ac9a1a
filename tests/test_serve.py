"""`rems-gateway serve` as a real process over real HTTP (docs/contracts.md §1)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.app.bootstrap import assemble
from gateway.config import ConfigError, load_settings
from gateway.http.app import readiness_problem
from rems_core.store.db import make_engine, upgrade

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "s3cret-admin-token"
FAMILY_NAME = "Zyxwvutsky"
GIVEN_NAME = "Quillane"
MRN = "MRN-PHI-4711"
BIRTH_DATE = "1961-07-23"
PHI = (FAMILY_NAME, GIVEN_NAME, MRN, BIRTH_DATE)
PRESCRIBER_NPI = "1234567893"
PHARMACY_NPI = "1588667638"


def registry(mrn: str = MRN, prescriber_npi: str = PRESCRIBER_NPI) -> dict[str, Any]:
    return {
        "prescribers": [{"npi": prescriber_npi, "name": "Ann Lee", "certified": True}],
        "pharmacies": [
            {
                "npi": PHARMACY_NPI,
                "name": "General Hospital Pharmacy",
                "enrollments": [{"setting": "outpatient", "certified": True}],
            }
        ],
        "patients": [
            {
                "id": "P1",
                "identifiers": [{"system": "urn:oid:2.16.840.1.113883.3.999.1", "value": mrn}],
                "name": {"family": FAMILY_NAME, "given": GIVEN_NAME},
                "birth_date": BIRTH_DATE,
                "sex": "F",
                "enrollment": {
                    "by": prescriber_npi,
                    "date": "2021-11-20",
                    "anc": {"value": 2100, "unit": "/uL", "drawn": "2021-11-18"},
                },
            }
        ],
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_environment(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("REMS_")}
    return {**env, **extra}


def rems_gateway(*args: str, cwd: Path, env: dict[str, str], timeout: float = 20) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Gateway:
    """One `rems-gateway serve` process; stdout and stderr go to one file."""

    def __init__(self, folder: Path, port: int, args: list[str], env: dict[str, str]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = folder / "gateway.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", *args],
                cwd=folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.http = httpx.Client(base_url=self.url, timeout=5)

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode}:\n{self.output()}")
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"serve not ready within {timeout} s:\n{self.output()}")

    def terminate(self, timeout: float = 10) -> int:
        self.http.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def warnings(self) -> list[str]:
        lines = [json.loads(line) for line in self.output().splitlines() if line.strip()]
        return [line["msg"] for line in lines if line["level"] == "WARNING"]


def start(folder: Path, *args: str, port: int | None = None, **env: str) -> Gateway:
    """A ready gateway on a temp SQLite database; the port by flag unless REMS_HTTP_PORT is set."""
    port = port or free_port()
    flags = ["--db", f"sqlite:///{folder / 'rems.db'}", *args]
    if "--mllp-port" not in args:
        flags += ["--mllp-port", str(free_port())]
    if "REMS_HTTP_PORT" not in env:
        flags += ["--port", str(port)]
    gateway = Gateway(folder, port, flags, clean_environment(**env))
    gateway.wait_ready()
    return gateway


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Defaults except an admin token: no --timezone, the default rule pack."""
    running = start(tmp_path_factory.mktemp("serve"), REMS_ADMIN_TOKEN=ADMIN_TOKEN)
    yield running
    running.terminate()


@pytest.fixture
def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def post_json(gateway: Gateway, body: Any, headers: dict[str, str]) -> httpx.Response:
    return gateway.http.post("/admin/registry", json=body, headers=headers)


def post_yaml(gateway: Gateway, body: Any, headers: dict[str, str]) -> httpx.Response:
    content = yaml.safe_dump(body, sort_keys=False)
    return gateway.http.post(
        "/admin/registry", content=content, headers={**headers, "Content-Type": "application/yaml"}
    )


# --- probes -----------------------------------------------------------------------------------


def test_healthz_says_the_process_is_alive(gateway: Gateway) -> None:
    response = gateway.http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_200_once_the_database_answers_and_the_writer_runs(gateway: Gateway) -> None:
    assert gateway.http.get("/readyz").status_code == 200


def test_metrics_count_requests_by_route_and_status(gateway: Gateway) -> None:
    gateway.http.get("/healthz")
    text = gateway.http.get("/metrics").text
    assert 'rems_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert "rems_http_request_duration_seconds_bucket" in text
    assert "rems_writer_commits_total" in text
    assert 'rems_writer_chain_lock_hold_seconds_bucket{le="+Inf"}' in text
    assert "rems_writer_cpu_seconds_total" in text


# --- POST /admin/registry -------------------------------------------------------------------


def test_registry_posted_as_json_answers_the_patient_ids(
    gateway: Gateway, admin: dict[str, str]
) -> None:
    response = post_json(gateway, registry(), admin)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["prescribers"], body["pharmacies"], body["patients"]) == (1, 1, 1)
    assert body["patient_ids"]["P1"].startswith("RP-")


def test_registry_posted_as_yaml_wrapped_in_registry_answers_the_same_ids(
    gateway: Gateway, admin: dict[str, str]
) -> None:
    first = post_json(gateway, registry(), admin).json()["patient_ids"]
    response = post_yaml(gateway, {"registry": registry()}, admin)
    assert response.status_code == 200, response.text
    assert response.json()["patient_ids"] == first


def test_posting_the_same_registry_twice_is_idempotent(
    gateway: Gateway, admin: dict[str, str]
) -> None:
    first = post_json(gateway, registry("MRN-TWICE"), admin)
    second = post_json(gateway, registry("MRN-TWICE"), admin)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()


def test_a_bad_npi_is_422_naming_where(gateway: Gateway, admin: dict[str, str]) -> None:
    response = post_json(gateway, registry(prescriber_npi="1234567890"), admin)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_registry"
    assert ["prescribers", 0, "npi"] in [issue["loc"] for issue in body["issues"]]


def test_admin_without_a_token_is_401(gateway: Gateway) -> None:
    response = post_json(gateway, registry(), {})
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


def test_admin_with_a_wrong_token_is_403(gateway: Gateway) -> None:
    response = post_json(gateway, registry(), {"Authorization": "Bearer not-the-token"})
    assert response.status_code == 403


def test_admin_with_the_token_is_200(gateway: Gateway, admin: dict[str, str]) -> None:
    assert post_json(gateway, registry(), admin).status_code == 200


# --- scheduled work ---------------------------------------------------------------------------


def test_the_scheduler_runs_monitoring_work_at_start_up(gateway: Gateway) -> None:
    deadline = time.monotonic() + 10
    while "scheduled work done" not in gateway.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "scheduled work done" in gateway.output()


def test_scheduled_work_in_the_future_is_refused_on_the_system_clock(
    gateway: Gateway, admin: dict[str, str]
) -> None:
    response = gateway.http.post(
        "/admin/scheduled-work", json={"until": "2999-01-01T00:00:00Z"}, headers=admin
    )
    assert response.status_code == 422 and response.json()["error"] == "until_in_future"


def test_scheduled_work_up_to_a_time_on_the_message_clock(tmp_path: Path) -> None:
    gateway = start(tmp_path, "--clock", "message")
    try:
        patient = post_json(gateway, registry(), {}).json()["patient_ids"]["P1"]
        response = gateway.http.post(
            "/admin/scheduled-work",
            json={"until": "2021-12-20T12:00:00Z", "patients": [patient]},
        )
        assert response.status_code == 200, response.text
        codes = {f["code"] for f in response.json()["patients"][patient]}
        assert "LABS_MISSED" in codes  # enrollment ANC drawn 2021-11-18: 32 days
        assert "scheduled work done" not in gateway.output()  # no periodic job on this clock
    finally:
        assert gateway.terminate() == 0


# --- start-up and shutdown --------------------------------------------------------------------


def test_startup_warns_that_the_rems_ended_and_names_the_other_packs(gateway: Gateway) -> None:
    pack_warning = [w for w in gateway.warnings() if "2025-06-13" in w]
    assert pack_warning, gateway.output()
    assert "clozapine-label-2025" in pack_warning[0]
    assert "auto" in pack_warning[0]
    assert "no --timezone: day counts use UTC" in gateway.warnings()


def test_rems_http_port_is_honoured_and_sigterm_exits_0_without_phi_in_logs(
    tmp_path: Path,
) -> None:
    port = free_port()
    gateway = start(tmp_path, "--timezone", "America/Chicago", port=port, REMS_HTTP_PORT=str(port))
    try:
        assert post_json(gateway, registry(), {}).status_code == 200
        assert post_yaml(gateway, registry(), {}).status_code == 200
        bad = registry(prescriber_npi="1234567890")
        assert post_json(gateway, bad, {}).status_code == 422
        twice = {"patients": [registry()["patients"][0], {**registry()["patients"][0], "sex": "M"}]}
        assert post_json(gateway, twice, {}).status_code == 409
    finally:
        started = time.monotonic()
        code = gateway.terminate(timeout=10)
    assert code == 0, gateway.output()
    assert time.monotonic() - started < 10
    output = gateway.output()
    assert not [value for value in PHI if value in output], output
    assert "no --timezone" not in output
    assert any("no admin token" in w for w in gateway.warnings())


def test_clock_message_is_refused_in_production(tmp_path: Path) -> None:
    result = rems_gateway(
        "serve", "--clock", "message", "--production", cwd=tmp_path, env=clean_environment()
    )
    assert result.returncode == 2
    assert "--production" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unknown_key_in_the_config_file_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("http_port: 9000\nhttp_prot: 9001\n", encoding="utf-8")
    result = rems_gateway("serve", "--config", str(config), cwd=tmp_path, env=clean_environment())
    assert result.returncode == 2
    assert "http_prot" in result.stderr


# --- readiness reasons (in-process, real SQLite) ----------------------------------------------


def test_not_ready_while_the_writer_thread_is_not_running(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'rems.db'}"
    upgrade(url)
    engine = make_engine(url)
    gateway = assemble(engine)
    gateway.writer.stop()
    try:
        problem = readiness_problem(gateway)
    finally:
        engine.dispose()
    assert problem == "the writer thread is not running"


def test_not_ready_while_the_database_has_no_schema(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    gateway = assemble(engine)
    try:
        problem = readiness_problem(gateway)
    finally:
        gateway.writer.stop()
        engine.dispose()
    assert problem is not None
    assert problem.startswith("the database does not answer")


# --- precedence: flags > REMS_… > config file > defaults (in-process) ---------------------------


@pytest.fixture
def toml_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [key for key in os.environ if key.startswith("REMS_")]:
        monkeypatch.delenv(key)
    path = tmp_path / "gateway.toml"
    path.write_text('http_port = 7000\nmllp_port = 7001\ntimezone = "Europe/Berlin"\n')
    return path


def test_flags_beat_environment_beat_config_file_beat_defaults(
    toml_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REMS_HTTP_PORT", "8000")
    monkeypatch.setenv("REMS_MLLP_PORT", "8001")
    settings = load_settings({"http_port": 9000, "mllp_port": None}, toml_config)
    assert settings.http_port == 9000
    assert settings.mllp_port == 8001
    assert settings.timezone == "Europe/Berlin"
    assert settings.host == "127.0.0.1"


def test_a_timezone_from_the_config_file_counts_as_explicit(toml_config: Path) -> None:
    assert load_settings({}, toml_config).timezone_is_explicit
    assert not load_settings({}).timezone_is_explicit


def test_an_unknown_rule_pack_is_one_line_naming_the_known_ones(toml_config: Path) -> None:
    with pytest.raises(ConfigError, match="clozapine-label-2025") as caught:
        load_settings({"rules": "clozapine-2019"})
    assert "\n" not in str(caught.value)


def test_the_processing_id_is_p_unless_the_gateway_is_a_training_or_debug_one(
    toml_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings({}, toml_config).processing_id == "P"
    monkeypatch.setenv("REMS_PROCESSING_ID", "T")
    assert load_settings({}, toml_config).processing_id == "T"
    assert load_settings({"processing_id": "D"}, toml_config).processing_id == "D"
    with pytest.raises(ConfigError, match="processing_id"):
        load_settings({"processing_id": "X"}, toml_config)
