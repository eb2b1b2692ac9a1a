"""Per-sender HL7 v2 settings through the real MLLP listener: a pinned client certificate, what to
do when the store is unavailable, the sender's ACK codes, and the message metrics."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme
from prometheus_client import generate_latest
from pydantic import ValidationError
from sqlalchemy import Engine, func, select

from gateway.app.service import RemsService
from gateway.app.values import Source
from gateway.app.writer import Writer
from gateway.metrics import GatewayMetrics
from gateway.mllp.client import MllpClientError, client_tls, send
from gateway.mllp.intake import Hl7Intake
from gateway.mllp.listener import Hl7Listener
from gateway.mllp.server import MllpSettings
from mappings.hl7v2.senders import SenderConfig, SenderDirectory
from rems_core.store import tables
from tests.conftest import run, sqlite_only
from tests.test_service import registry

# The sender's transport, certificate, ACK codes and metrics; "the store unavailable" is the
# writer stopped. What the intake stores is test_hl7_intake's, on both backends (conftest).
pytestmark = sqlite_only

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hl7"
ANC = (FIXTURES / "oru-v251-loinc-anc.hl7").read_bytes()  # MSH-3 LAB, MSH-4 GENERAL HOSP
NOW = datetime(2021, 12, 1, 15, 0, tzinfo=UTC)
PLAIN = MllpSettings(port=0, idle_timeout_s=5.0)


def lab(**settings: object) -> SenderDirectory:
    """The fixtures' sender, LAB at GENERAL HOSP, with the given settings; nobody else."""
    config = {"application": "LAB", "facility": "GENERAL HOSP", **settings}
    return SenderDirectory(senders=[SenderConfig.model_validate(config)])


def msa(ack: bytes) -> list[str]:
    return ack.decode().split("\r")[1].split("|")


def err_5(ack: bytes) -> list[str]:
    """ERR-5 (our code) of each ERR of a v2.5+ ACK."""
    rows = [s.split("|") for s in ack.decode().split("\r") if s.startswith("ERR|")]
    return [row[5].split("^")[0] for row in rows if len(row) > 5]


def rows(engine: Engine, table: type) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table.__table__)).scalar_one()


def stored_messages(engine: Engine) -> int:
    return rows(engine, tables.Hl7MessageRow)


@pytest.fixture
def loaded(service: RemsService) -> RemsService:
    run(service.load_registry(registry(enrolled_on="2021-11-20"), Source("test")))
    return service


@asynccontextmanager
async def listening(
    service: RemsService,
    senders: SenderDirectory,
    settings: MllpSettings = PLAIN,
    metrics: GatewayMetrics | None = None,
) -> AsyncIterator[Hl7Listener]:
    listener = Hl7Listener(
        service,
        senders,
        settings,
        "message",
        on_ack=metrics.count_ack if metrics else None,
        on_message=metrics.count_hl7_message if metrics else None,
    )
    await listener.start()
    try:
        yield listener
    finally:
        await listener.stop()


# --- settings ---------------------------------------------------------------------------------


def test_a_pinned_fingerprint_is_read_in_any_case_with_or_without_colons() -> None:
    digits = hashlib.sha256(b"certificate").hexdigest()
    openssl = ":".join(digits[i : i + 2] for i in range(0, 64, 2)).upper()
    for written in (digits, digits.upper(), openssl, f" {openssl.lower()} "):
        sender = SenderConfig(application="LAB", tls_fingerprint_sha256=written)
        assert sender.tls_fingerprint_sha256 == digits


@pytest.mark.parametrize("written", ["abc", "zz" * 32, hashlib.sha1(b"x").hexdigest()])
def test_a_fingerprint_that_is_not_sha256_hex_is_refused(written: str) -> None:
    with pytest.raises(ValidationError, match="64 hex digits"):
        SenderConfig(application="LAB", tls_fingerprint_sha256=written)


@pytest.mark.parametrize(
    "ack_codes", [{"AA": "OK"}, {"AA": "aa"}, {"CA": "AA"}, {"XX": "AE"}, {"AE": ""}]
)
def test_ack_codes_are_only_codes_of_hl7_table_0008(ack_codes: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        SenderConfig(application="LAB", ack_codes=ack_codes)


def test_on_store_failure_is_ar_or_no_ack() -> None:
    assert SenderConfig(application="LAB").on_store_failure == "ar"
    with pytest.raises(ValidationError):
        SenderConfig(application="LAB", on_store_failure="drop")


# --- TLS client-certificate pinning -----------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    lab_cert: Path  # the certificate pinned for LAB
    lab_key: Path
    lab_fingerprint: str
    other_cert: Path  # another client of the same CA: valid, but not LAB's
    other_key: Path

    def mutual(self) -> MllpSettings:
        return replace(
            PLAIN, tls_cert=self.server_cert, tls_key=self.server_key, tls_client_ca=self.ca
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    clients = [ca.issue_cert("lab.example", common_name=name) for name in ("lab", "other")]
    ca.cert_pem.write_to_path(tmp / "ca.pem")
    server.cert_chain_pems[0].write_to_path(tmp / "server.pem")
    server.private_key_pem.write_to_path(tmp / "server.key")
    for name, client in zip(("lab", "other"), clients, strict=True):
        client.cert_chain_pems[0].write_to_path(tmp / f"{name}.pem")
        client.private_key_pem.write_to_path(tmp / f"{name}.key")
    der = ssl.PEM_cert_to_DER_cert(clients[0].cert_chain_pems[0].bytes().decode())
    return Pki(
        tmp / "ca.pem",
        tmp / "server.pem",
        tmp / "server.key",
        tmp / "lab.pem",
        tmp / "lab.key",
        hashlib.sha256(der).hexdigest(),
        tmp / "other.pem",
        tmp / "other.key",
    )


def openssl_form(fingerprint: str) -> str:
    """As `openssl x509 -fingerprint -sha256` prints it: upper case, colon-separated."""
    return ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()


def test_a_pinned_sender_with_its_certificate_is_accepted(
    loaded: RemsService, engine: Engine, pki: Pki
) -> None:
    senders = lab(tls_fingerprint_sha256=openssl_form(pki.lab_fingerprint))

    async def body() -> list[bytes]:
        async with listening(loaded, senders, pki.mutual()) as listener:
            tls = client_tls(pki.ca, pki.lab_cert, pki.lab_key)
            return await send("127.0.0.1", listener.server.port, [ANC], tls=tls)

    (ack,) = run(body())
    assert msa(ack)[:3] == ["MSA", "AA", "MSG0001"]
    assert stored_messages(engine) == 1


def test_a_pinned_sender_with_another_valid_certificate_is_refused_and_nothing_stored(
    loaded: RemsService, engine: Engine, pki: Pki
) -> None:
    senders = lab(tls_fingerprint_sha256=pki.lab_fingerprint)
    before = (rows(engine, tables.ObservationRow), rows(engine, tables.AuditRecord))

    async def body() -> list[bytes]:
        async with listening(loaded, senders, pki.mutual()) as listener:
            tls = client_tls(pki.ca, pki.other_cert, pki.other_key)
            return await send("127.0.0.1", listener.server.port, [ANC, ANC], tls=tls)

    first, second = run(body())  # refused, and the connection stays open for the next one
    assert msa(first)[:3] == ["MSA", "AR", "MSG0001"]
    assert err_5(first) == ["SENDER_CERTIFICATE_MISMATCH"]
    assert "|204^Unknown key identifier^HL70357|E|" in first.decode()
    assert second == first
    assert stored_messages(engine) == 0
    assert (rows(engine, tables.ObservationRow), rows(engine, tables.AuditRecord)) == before


@pytest.mark.parametrize("transport", ["plain TCP", "TLS without a client certificate"])
def test_a_pinned_sender_without_a_client_certificate_is_refused(
    loaded: RemsService, engine: Engine, pki: Pki, transport: str
) -> None:
    senders = lab(tls_fingerprint_sha256=pki.lab_fingerprint)
    settings, tls = PLAIN, None
    if transport != "plain TCP":  # server TLS only: no client certificate is asked for
        settings = replace(PLAIN, tls_cert=pki.server_cert, tls_key=pki.server_key)
        tls = client_tls(pki.ca)

    async def body() -> list[bytes]:
        async with listening(loaded, senders, settings) as listener:
            return await send("127.0.0.1", listener.server.port, [ANC], tls=tls)

    (ack,) = run(body())
    assert msa(ack)[1] == "AR" and err_5(ack) == ["SENDER_CERTIFICATE_MISMATCH"]
    assert stored_messages(engine) == 0


def test_a_sender_without_a_pin_is_taken_over_plain_tcp(loaded: RemsService) -> None:
    async def body() -> list[bytes]:
        async with listening(loaded, lab()) as listener:
            return await send("127.0.0.1", listener.server.port, [ANC])

    (ack,) = run(body())
    assert msa(ack)[1] == "AA"


# --- the store is unavailable -----------------------------------------------------------------


def test_no_ack_sends_nothing_and_closes_the_connection_when_the_store_fails(
    loaded: RemsService, writer: Writer
) -> None:
    writer.stop()  # the store is unavailable from now on

    async def body() -> None:
        async with listening(loaded, lab(on_store_failure="no_ack")) as listener:
            with pytest.raises(MllpClientError) as failure:
                await send("127.0.0.1", listener.server.port, [ANC], timeout_s=5)
            assert failure.value.replies == []
            assert listener.server.open_connections == 0

    run(body())


def test_ar_is_answered_on_an_open_connection_when_the_store_fails(
    loaded: RemsService, writer: Writer
) -> None:
    writer.stop()

    async def body() -> list[bytes]:
        async with listening(loaded, lab(on_store_failure="ar")) as listener:
            return await send("127.0.0.1", listener.server.port, [ANC, ANC], timeout_s=5)

    first, second = run(body())
    assert msa(first)[1] == "AR" and err_5(first) == ["STORE_UNAVAILABLE"]
    assert msa(second)[1] == "AR"


def test_no_ack_is_only_for_the_store_a_refused_message_still_gets_its_ar(
    loaded: RemsService,
) -> None:
    unsupported = ANC.replace(b"ORU^R01^ORU_R01", b"ORU^R30^ORU_R30")

    async def body() -> list[bytes]:
        async with listening(loaded, lab(on_store_failure="no_ack")) as listener:
            return await send("127.0.0.1", listener.server.port, [unsupported, ANC])

    refused, accepted = run(body())
    assert msa(refused)[1] == "AR" and msa(accepted)[1] == "AA"


# --- the sender's ACK codes -------------------------------------------------------------------


def test_ack_codes_map_our_codes_to_the_senders_msa_1(loaded: RemsService, engine: Engine) -> None:
    senders = lab(ack_codes={"AA": "CA", "AE": "CE", "AR": "CR"})
    resent = ANC.replace(b"20211201081500-0500", b"20211201091500-0500")  # only MSH-7 differs
    conflict = ANC.replace(b"||0.8|", b"||0.9|")
    unsupported = ANC.replace(b"|P|2.5.1", b"|X|2.5.1")

    async def body() -> list[bytes]:
        async with listening(loaded, senders) as listener:
            return await send(
                "127.0.0.1", listener.server.port, [ANC, resent, conflict, unsupported]
            )

    first, again, held, refused = run(body())
    assert [msa(a)[1] for a in (first, again, held, refused)] == ["CA", "CA", "CE", "CR"]
    assert again == first  # the stored ACK, byte for byte
    with engine.connect() as conn:
        stored = conn.execute(select(tables.Hl7MessageRow.__table__.c.ack)).scalars().all()
    assert first.decode() in stored


def test_a_resend_answered_from_the_store_keeps_its_code_and_is_a_duplicate(
    loaded: RemsService,
) -> None:
    intake = Hl7Intake(loaded, lab(ack_codes={"AA": "CA"}))
    first = run(intake.receive(ANC, NOW))
    again = run(intake.receive(ANC, NOW))
    assert (first.code, first.disposition) == ("AA", "accepted")
    assert (again.code, again.disposition, again.ack) == ("AA", "duplicate", first.ack)


def test_enhanced_mode_is_not_remapped(loaded: RemsService) -> None:
    senders = lab(ack_codes={"AA": "AE", "AE": "AR"})
    enhanced = ANC.replace(b"|P|2.5.1", b"|P|2.5.1|||AL|NE")

    async def body() -> list[bytes]:
        async with listening(loaded, senders) as listener:
            return await send("127.0.0.1", listener.server.port, [enhanced])

    (ack,) = run(body())
    assert msa(ack)[1] == "CA"


# --- metrics ----------------------------------------------------------------------------------


def test_messages_are_counted_by_type_and_disposition(loaded: RemsService, writer: Writer) -> None:
    metrics = GatewayMetrics(writer)
    no_results = (FIXTURES / "oru-no-anc.hl7").read_bytes()
    unmatched = ANC.replace(b"MRN123", b"MRN404").replace(b"|MSG0001|", b"|MSG0002|")
    conflict = ANC.replace(b"||0.8|", b"||0.9|")
    other_type = ANC.replace(b"ORU^R01^ORU_R01", b"ZZZ^Z99^ZZZ_Z99")
    adt = ANC.replace(b"ORU^R01^ORU_R01", b"ADT^A08^ADT_A01").replace(b"|MSG0001|", b"|MSG0009|")
    unreadable = b"this is not HL7 MRN123"
    senders = SenderDirectory(accept_unknown=True)
    batch = [ANC, ANC, conflict, unmatched, no_results, other_type, adt, unreadable]

    async def body() -> None:
        async with listening(loaded, senders, metrics=metrics) as listener:
            await send("127.0.0.1", listener.server.port, batch)
            writer.stop()  # and one more while the store is unavailable
            late = ANC.replace(b"|MSG0001|", b"|MSG0003|")
            await send("127.0.0.1", listener.server.port, [late])

    run(body())
    text = generate_latest(metrics.registry).decode()
    expected = {
        ("ORU^R01", "accepted"): 1,
        ("ORU^R01", "duplicate"): 1,
        ("ORU^R01", "conflict"): 1,
        ("ORU^R01", "unmatched"): 1,
        ("ORU^R01", "no_results"): 1,
        ("ORU^R01", "error"): 1,
        ("ORU^R01", "rejected"): 0,
        ("other", "rejected"): 1,
        ("ADT^A08", "accepted"): 1,  # a known patient's update
        ("unreadable", "rejected"): 1,
    }
    for (message_type, disposition), value in expected.items():
        line = (
            f'rems_hl7_messages_total{{disposition="{disposition}",'
            f'message_type="{message_type}"}} {float(value)}'
        )
        assert line in text, line
    assert "ZZZ" not in text and "MSG000" not in text and "MRN" not in text
    assert 'rems_hl7_acks_total{code="AR"} 2.0' in text  # other type, store unavailable


def test_an_oversize_frame_is_counted_as_rejected_under_its_type(
    loaded: RemsService, writer: Writer
) -> None:
    metrics = GatewayMetrics(writer)
    big = ANC + b"NTE|1||" + b"x" * 5000 + b"\r"

    async def body() -> list[bytes]:
        settings = replace(PLAIN, max_frame_bytes=2000)
        async with listening(loaded, lab(ack_codes={"AE": "AR"}), settings, metrics) as listener:
            return await send("127.0.0.1", listener.server.port, [big])

    (ack,) = run(body())
    assert msa(ack)[1] == "AR" and err_5(ack) == ["FRAME_TOO_LARGE"]
    text = generate_latest(metrics.registry).decode()
    assert 'rems_hl7_messages_total{disposition="rejected",message_type="ORU^R01"} 1.0' in text


def test_no_ack_is_counted_as_an_error_and_not_as_an_ack(
    loaded: RemsService, writer: Writer
) -> None:
    metrics = GatewayMetrics(writer)
    writer.stop()

    async def body() -> None:
        senders = lab(on_store_failure="no_ack")
        async with listening(loaded, senders, metrics=metrics) as listener:
            with pytest.raises(MllpClientError):
                await send("127.0.0.1", listener.server.port, [ANC], timeout_s=5)

    run(body())
    text = generate_latest(metrics.registry).decode()
    assert 'rems_hl7_messages_total{disposition="error",message_type="ORU^R01"} 1.0' in text
    assert "rems_hl7_acks_total{" not in text
