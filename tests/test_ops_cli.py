"""The command's failures as an operator meets them (issue 18): one line naming the problem and
what to change, exit 2 for options and 1 for what happened at run time, never a traceback; the
version; `rems-gateway token` against a real gateway."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy import Engine

from gateway.app.service import RemsService
from tests.conftest import sqlite_only
from tests.http_server import running_app
from tests.smart_tokens import TestClient, write_clients_file
from tests.test_cli import cli
from tests.test_serve import clean_environment, free_port, rems_gateway

ROOT = Path(__file__).parent.parent
ORU = ROOT / "fixtures" / "hl7" / "oru-v251-loinc-anc.hl7"


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """stderr, which must be one line and no traceback."""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return lines[0]


def test_version_is_the_installed_packages() -> None:
    done = cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"rems-gateway {version('rems-gateway')}\n"


# --- send -------------------------------------------------------------------------------------


def test_send_to_a_closed_port_says_nothing_listens() -> None:
    port = free_port()
    done = cli("send", str(ORU), "--to", f"127.0.0.1:{port}")
    assert done.returncode == 1
    line = one_line(done)
    assert f"nothing listens on 127.0.0.1:{port}" in line and "--mllp-port" in line


def test_send_to_an_unknown_host_says_so() -> None:
    done = cli("send", str(ORU), "--to", "no-such-host.invalid:2575")
    assert done.returncode == 1
    assert "unknown host 'no-such-host.invalid'" in one_line(done)


@pytest.mark.parametrize("to", ["localhost", "localhost:", "127.0.0.1:http", "::1:2575", ":0"])
def test_send_to_without_a_port_is_a_usage_error(to: str) -> None:
    done = cli("send", str(ORU), "--to", to)
    assert done.returncode == 2
    line = one_line(done)
    assert "is not HOST:PORT" in line and "--to 127.0.0.1:2575" in line


@contextmanager
def silent_listener() -> Iterator[int]:
    """A port whose connections are taken (by the kernel) and never answered."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def test_send_that_gets_no_ack_names_the_timeout_and_its_flag() -> None:
    with silent_listener() as port:
        done = cli("send", str(ORU), "--to", f"127.0.0.1:{port}", "--timeout", "0.5")
    assert done.returncode == 1
    line = one_line(done)
    assert "no ACK to MSG0001" in line and "within 0.5 s" in line and "--timeout" in line


# --- audit with a --db that is no gateway's database ---------------------------------------------


@pytest.mark.parametrize("command", [["verify"], ["checkpoint", "--out", "head.json"]])
def test_audit_of_a_missing_database_creates_nothing(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "typo.db"
    done = rems_gateway(
        "audit", *command, "--db", f"sqlite:///{missing}", cwd=tmp_path, env=clean_environment()
    )
    assert done.returncode == 2
    line = one_line(done)
    assert f"the database {missing} does not exist" in line and "--db" in line
    assert list(tmp_path.iterdir()) == []  # no empty SQLite file, no checkpoint


@pytest.mark.parametrize("content", ["sqlite", "text"])
def test_audit_of_a_database_that_is_not_the_gateways_says_so(tmp_path: Path, content: str) -> None:
    other = tmp_path / "other.db"
    if content == "sqlite":
        with sqlite3.connect(other) as connection:
            connection.execute("CREATE TABLE orders (id INTEGER)")
    else:
        other.write_text("not a database\n")
    before = other.read_bytes()
    done = cli("audit", "verify", "--db", f"sqlite:///{other}")
    assert done.returncode == 2
    assert "is not a rems-gateway database" in one_line(done)
    assert other.read_bytes() == before and sorted(tmp_path.iterdir()) == [other]


def test_audit_of_the_gateways_database_still_verifies(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'rems.db'}"
    assert cli("db", "upgrade", "--db", url).returncode == 0
    verified = cli("audit", "verify", "--db", url)
    assert verified.returncode == 0 and "audit chain intact" in verified.stdout
    out = tmp_path / "head.json"
    written = cli("audit", "checkpoint", "--out", str(out), "--db", url)
    assert written.returncode == 0 and out.is_file(), written.stderr


# --- serve on a port in use ------------------------------------------------------------------


@contextmanager
def occupied() -> Iterator[int]:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


@pytest.mark.parametrize(("which", "flag"), [("HTTP", "--http-port"), ("MLLP", "--mllp-port")])
def test_serve_on_a_port_in_use_is_one_line_naming_the_port_and_the_flag(
    tmp_path: Path, which: str, flag: str
) -> None:
    with occupied() as busy:
        ports = {"--http-port": str(free_port()), "--mllp-port": str(free_port()), flag: str(busy)}
        done = rems_gateway(
            "serve",
            *[part for pair in ports.items() for part in pair],
            "--db",
            f"sqlite:///{tmp_path / 'rems.db'}",
            cwd=tmp_path,
            env=clean_environment(),
        )
    assert done.returncode == 1
    line = one_line(done)
    assert f"the {which} port {busy} on 127.0.0.1 is already in use" in line
    assert flag in line
    assert not (tmp_path / "rems.db").exists()  # it stopped before touching the database


def test_serve_refuses_one_port_for_both_listeners(tmp_path: Path) -> None:
    done = rems_gateway(
        "serve", "--http-port", "9100", "--mllp-port", "9100", cwd=tmp_path, env=clean_environment()
    )
    assert done.returncode == 2
    assert "http_port and mllp_port are both 9100" in one_line(done)


# --- rems-gateway token -----------------------------------------------------------------------


def private_pem(client: TestClient, path: Path) -> Path:
    pem = client.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    path.write_bytes(pem)
    return path


def token(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "token", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_environment(),
        timeout=60,
    )


LAB_EC = TestClient.ec("lab-ec", ["system/Observation.cruds"])
LAB_RSA = TestClient.rsa("lab-rsa", ["system/Observation.rs", "system/Patient.rs"])


@pytest.fixture
def smart_gateway(service: RemsService, engine: Engine, tmp_path: Path) -> Iterator[str]:
    """A gateway on a loopback port that knows LAB_EC and LAB_RSA, without a public base URL
    (the token endpoint it announces is the one the command reaches)."""
    clients = write_clients_file(tmp_path / "smart-clients.yaml", [LAB_EC, LAB_RSA])
    with running_app(service, engine, auth="smart", smart_clients=clients) as base:
        yield base


@sqlite_only
@pytest.mark.parametrize("client", [LAB_EC, LAB_RSA], ids=["ES384", "RS384"])
def test_token_prints_only_an_access_token_of_the_scopes_asked(
    smart_gateway: str, tmp_path: Path, client: TestClient
) -> None:
    key = private_pem(client, tmp_path / "client.pem")
    done = token(
        "--client", client.client_id, "--key", str(key), "--scope", "system/Observation.rs",
        "--gateway", smart_gateway + "/fhir",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and done.stderr == ""
    claims = jwt.decode(done.stdout.strip(), options={"verify_signature": False})
    assert claims["client_id"] == client.client_id
    assert claims["scope"] == "system/Observation.rs"


@sqlite_only
def test_token_without_scope_gets_every_scope_the_client_is_allowed(
    smart_gateway: str, tmp_path: Path
) -> None:
    key = private_pem(LAB_RSA, tmp_path / "client.pem")
    done = token("--client", LAB_RSA.client_id, "--key", str(key), "--gateway", smart_gateway)
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), options={"verify_signature": False})
    assert sorted(claims["scope"].split()) == sorted(LAB_RSA.scopes)


@sqlite_only
def test_token_refused_by_the_gateway_is_one_line_with_its_oauth_error(
    smart_gateway: str, tmp_path: Path
) -> None:
    key = private_pem(LAB_EC, tmp_path / "client.pem")  # not the key of lab-rsa
    done = token("--client", LAB_RSA.client_id, "--key", str(key), "--gateway", smart_gateway)
    assert done.returncode == 1 and done.stdout == ""
    assert "invalid_client" in one_line(done)


def test_token_from_no_gateway_or_with_a_bad_key_is_one_line(tmp_path: Path) -> None:
    key = private_pem(LAB_EC, tmp_path / "client.pem")
    port = free_port()
    unreachable = token("--client", "x", "--key", str(key), "--gateway", f"http://127.0.0.1:{port}")
    assert unreachable.returncode == 1
    assert f"cannot reach http://127.0.0.1:{port}" in one_line(unreachable)
    (tmp_path / "public.pem").write_text(
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    )
    bad_key = token("--client", "x", "--key", str(tmp_path / "public.pem"))
    assert bad_key.returncode == 2
    assert "not an unencrypted PEM private key" in one_line(bad_key)
    bad_url = token("--client", "x", "--key", str(key), "--gateway", "127.0.0.1:8080")
    assert bad_url.returncode == 2
    assert "is not the gateway's URL" in one_line(bad_url)


def test_serve_with_tls_files_it_cannot_use_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    done = rems_gateway(
        "serve", "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"),
        "--http-port", str(free_port()), "--mllp-port", str(free_port()),
        "--db", f"sqlite:///{tmp_path / 'rems.db'}", cwd=tmp_path, env=clean_environment(),
    )  # fmt: skip
    assert done.returncode == 1
    line = one_line(done)
    assert "cannot use --tls-cert" in line and "PEM" in line
    assert not (tmp_path / "rems.db").exists()


@pytest.mark.parametrize("command", [["audit", "verify"], ["db", "upgrade"]])
def test_a_database_server_that_does_not_answer_is_one_line_without_the_password(
    command: list[str],
) -> None:
    done = cli(*command, "--db", f"postgresql+psycopg://rems:s3cret@127.0.0.1:{free_port()}/rems")
    assert done.returncode == 1
    line = one_line(done)
    assert "cannot read the database postgresql+psycopg://rems:***@" in line
    assert "s3cret" not in done.stdout + done.stderr
