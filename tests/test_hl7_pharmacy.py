"""Pharmacy orders over HL7 v2 (docs/contracts.md §4 "Pharmacy orders"): RDE/OMP read as the
contract lists, answered RRE/ORP after the decision is stored, over a real MLLP socket."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from pydantic import ValidationError
from sqlalchemy import Engine, func, select

from gateway.app.service import RemsService
from gateway.app.values import Source
from gateway.mllp.client import connect, send
from gateway.mllp.listener import Hl7Listener
from gateway.mllp.sending import outgoing_message, send_all
from gateway.mllp.server import MllpSettings
from mappings.hl7v2.oru import Hl7Problem
from mappings.hl7v2.pharmacy import OrderRejected, to_dispense_record, to_pharmacy_message
from mappings.hl7v2.pharmacy_ack import OrderAnswer, build_order_answer, dispensed, ended
from mappings.hl7v2.senders import SenderConfig, SenderDirectory
from mappings.hl7v2.tokenizer import parse
from rems_core.model import Decision, Finding, Outcome, Rda, Setting
from rems_core.rda import OrderAction
from rems_core.registry import RegistryDocument
from rems_core.store import tables
from tests.conftest import run

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hl7"
NOW = datetime(2022, 3, 10, 10, 0, tzinfo=UTC)
PRESCRIBER, INPATIENT_PHARMACY, OUTPATIENT_PHARMACY = "1234567893", "1850642137", "1937264806"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.999.1"
WARDRX = SenderConfig(application="WARDRX", facility="NORTHGEN")
RXSYS = SenderConfig(
    application="RXSYS",
    facility="COUNTY",
    drug_codes={"CLZ100": "197536"},
    days_supply_field="ZRX-2",
    pharmacy_npi=OUTPATIENT_PHARMACY,
    assigning_authorities={"GH": MRN_SYSTEM},
)
CPOE = SenderConfig(application="CPOE", facility="NORTHGEN", pharmacy_npi=OUTPATIENT_PHARMACY)
RETAILRX = SenderConfig(application="RETAILRX", pharmacy_npi=OUTPATIENT_PHARMACY)
SENDERS = SenderDirectory(senders=[WARDRX, RXSYS, CPOE, RETAILRX])
PLAIN = MllpSettings(port=0, idle_timeout_s=5.0)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def orders_of(text: str | bytes, sender: SenderConfig = WARDRX) -> list:
    return to_pharmacy_message(parse(text), sender, NOW, UTC).orders


def rde(*order: str, pv1: str = "PV1|1|O", version: str = "2.5.1", msh_tail: str = "") -> str:
    segments = [
        f"MSH|^~\\&|WARDRX|NORTHGEN|REMS|REMS|20220310100000+0000||RDE^O11^RDE_O11|C1|P|{version}"
        + msh_tail,
        f"PID|1||RDE-FIXTURE-1^^^&{MRN_SYSTEM.removeprefix('urn:oid:')}&ISO^MR",
        pv1,
        *order,
    ]
    return "\r".join(segments) + "\r"


def orc(placer: str = "ORD-1", prescriber: str = PRESCRIBER, order_type: str = "O") -> str:
    fields = ["ORC", "NW", placer, *[""] * 6, "20220310095500+0000", "", ""]
    fields += [f"{prescriber}^Lee^Ann^^^^^^NPI" if prescriber else "", *[""] * 16, order_type]
    return "|".join(fields)


def rxe(drug: str = "197536^clozapine 100 MG Oral Tablet^RXNORM", pharmacy: str = "") -> str:
    return "|".join(["RXE", "", drug, *[""] * 37, pharmacy])


def tq1(days: str = "7^d") -> str:
    return f"TQ1|1|||||{days}"


def segments(answer: str) -> list[list[str]]:
    return [s.split("|") for s in answer.split("\r") if s]


def of(answer: str, name: str) -> list[list[str]]:
    return [s for s in segments(answer) if s[0] == name]


# --- reading the order --------------------------------------------------------------------------


def test_an_inpatient_system_s_rde_is_read_field_by_field() -> None:
    (order,) = orders_of(fixture("rde-v251-inpatient-tq1.hl7"))
    request = order.request
    assert (order.sequence, order.placer, request.request_id) == (1, "WRX-ORD-5501", "WRX-ORD-5501")
    assert request.prescriber_npi == PRESCRIBER  # ORC-12
    assert request.pharmacy_npi == INPATIENT_PHARMACY  # RXE-40
    assert (request.drug, request.days_supply, request.setting) == ("197536", 7, Setting.INPATIENT)
    assert request.discharge is False and request.override is None
    assert request.dispense_date == NOW


def test_a_v23_rde_o01_with_a_local_drug_code_and_a_z_segment_days_supply() -> None:
    (order,) = orders_of(fixture("rde-v23-local-code-zrx.hl7"), RXSYS)
    request = order.request
    assert (request.drug, request.days_supply) == ("197536", 30)  # drug_codes, ZRX-2
    assert request.pharmacy_npi == OUTPATIENT_PHARMACY  # no RXE-40: the sender's pharmacy_npi
    assert request.setting == Setting.OUTPATIENT  # no ORC-29: PV1-2 O


def test_several_orders_under_one_placer_number_are_several_checks() -> None:
    first, second = orders_of(fixture("omp-v251-cpoe.hl7"), CPOE)
    assert [first.request.request_id, second.request.request_id] == ["CPOE-7731#1", "CPOE-7731#2"]
    assert (first.request.drug, first.request.days_supply) == ("2626", 14)  # RXO-1, TQ1-6
    assert (second.request.drug, second.request.days_supply) == ("197361", 30)


def test_the_prescriber_falls_back_to_pv1_7_then_to_the_registry() -> None:
    attending = "PV1|1|O||||||1602947180^Diaz^Carl^^^^^^NPI"
    (order,) = orders_of(rde(orc(prescriber=""), rxe(), tq1(), pv1=attending))
    assert order.request.prescriber_npi == "1602947180"
    not_npi = "PV1|1|O||||||55501^Diaz^Carl^^^^^^LOCAL"
    (order,) = orders_of(rde(orc(prescriber=""), rxe(), tq1(), pv1=not_npi))
    assert order.prescriber_from_registry and order.request.prescriber_npi == ""


def test_two_tq1_that_disagree_give_the_longer_with_a_warning() -> None:
    (order,) = orders_of(rde(orc(), rxe(), tq1("7^d"), tq1("2^wk")))
    assert order.request.days_supply == 14
    assert [p.code for p in order.problems] == ["DAYS_SUPPLY_INCONSISTENT"]


def test_an_order_without_a_days_supply_or_a_placer_number_is_refused() -> None:
    with pytest.raises(OrderRejected) as missing:
        orders_of(rde(orc(), rxe()))
    assert missing.value.problem.code == "DAYS_SUPPLY_MISSING"
    with pytest.raises(OrderRejected) as no_placer:
        orders_of(rde(orc(placer=""), rxe(), tq1()))
    assert no_placer.value.problem.location == "ORC^1^2"


def test_an_unreadable_drug_is_warned_and_checked_as_no_drug() -> None:
    (order,) = orders_of(rde(orc(), rxe("X99^Mystery tablet^L"), tq1()))
    assert order.request.drug == ""
    assert [p.code for p in order.problems] == ["DRUG_UNREADABLE"]
    # a clozapine code in the alternate triplet is read
    (order,) = orders_of(rde(orc(), rxe("X99^Mystery^L^197536^clozapine^RXNORM"), tq1()))
    assert order.request.drug == "197536" and not order.problems


@pytest.mark.parametrize(
    ("order_type", "pv1", "setting"),
    [
        ("I", "PV1|1|O", Setting.INPATIENT),
        ("", "PV1|1|INPATIENT", Setting.INPATIENT),
        ("", "PV1|1|O", Setting.OUTPATIENT),
        ("O", "PV1|1|I", Setting.OUTPATIENT),
    ],
)
def test_the_setting_is_orc_29_else_pv1_2(order_type: str, pv1: str, setting: Setting) -> None:
    (order,) = orders_of(rde(orc(order_type=order_type), rxe(), tq1(), pv1=pv1))
    assert order.request.setting == setting


def _pv1(discharged: str = "", disposition: str = "") -> str:
    fields = ["PV1", "1", "I", *[""] * 33, disposition, *[""] * 8, discharged]
    return "|".join(fields)


def test_discharge_is_pv1_45_on_the_order_s_day_or_later_or_the_sender_s_setting() -> None:
    def discharge(pv1: str, sender: SenderConfig = WARDRX) -> bool:
        (order,) = orders_of(rde(orc(order_type=""), rxe(), tq1(), pv1=pv1), sender)
        return order.request.discharge

    assert discharge(_pv1("20220310160000+0000"))
    assert not discharge(_pv1("20220309160000+0000"))  # discharged before the order
    assert not discharge(_pv1(disposition="01"))  # PV1-36 alone is no discharge
    assert discharge("PV1|1|O", WARDRX.model_copy(update={"discharge": True}))


OVERRIDE = "OBX|1|TX|REMS-OVERRIDE^Pharmacist override^99REMS||Prescriber reached by phone.||||||F|||||1234567893^Lee^Ann^^^^^^NPI"
OVERRIDE_ANC = "OBX|2|NM|751-8^Neutrophils^LN||2000|/uL|||||F|||20220309080000+0000"


def test_the_pharmacist_override_is_the_rems_override_obx_and_the_anc_beside_it() -> None:
    (order,) = orders_of(rde(orc(), rxe(), tq1(), OVERRIDE, OVERRIDE_ANC))
    override = order.request.override
    assert override is not None
    assert (override.prescriber_npi, override.rationale) == (
        PRESCRIBER,
        "Prescriber reached by phone.",
    )
    assert override.anc is not None
    assert (override.anc.value, override.anc.unit, override.anc.code) == ("2000", "/uL", "751-8")
    assert override.anc.drawn == datetime(2022, 3, 9, 8, 0, tzinfo=UTC)
    # an ANC OBX without the REMS-OVERRIDE one is no override
    (order,) = orders_of(rde(orc(), rxe(), tq1(), OVERRIDE_ANC))
    assert order.request.override is None
    # the marker alone: an incomplete override (the rules answer OVERRIDE_INCOMPLETE)
    (order,) = orders_of(rde(orc(), rxe(), tq1(), "OBX|1|TX|REMS-OVERRIDE^^99REMS"))
    assert order.request.override is not None
    assert order.request.override.rationale is None and order.request.override.anc is None


def test_cancel_and_discontinue_are_order_ends() -> None:
    cancel = orc().replace("ORC|NW", "ORC|CA", 1)
    message = to_pharmacy_message(parse(rde(cancel, rxe(), tq1())), WARDRX, NOW, UTC)
    assert message.orders == []
    assert [(e.end.request_id, e.end.action, e.sequence) for e in message.ends] == [
        ("ORD-1", OrderAction.CANCEL, 1)
    ]


@pytest.mark.parametrize(
    "settings",
    [{"days_supply_field": "TQ16"}, {"days_supply_field": "tq1-6"}, {"pharmacy_npi": "12345"}],
)
def test_pharmacy_settings_that_cannot_be_read_stop_the_senders_file(settings: dict) -> None:
    with pytest.raises(ValidationError):
        SenderConfig(application="RX", **settings)


# --- the answer ---------------------------------------------------------------------------------


def decision(outcome: Outcome, reasons: tuple[Finding, ...] = (), rda: bool = False) -> Decision:
    issued = Rda("RDA-1", NOW, "P1", OUTPATIENT_PHARMACY, PRESCRIBER, 7) if rda else None
    warnings = (Finding("ANC_OVERDUE", "ANC due"),)
    return Decision(outcome, reasons, warnings, "clozapine-rems-2021", "1", rda=issued)


def answer(message: str, *answers: OrderAnswer, problems: list[Hl7Problem] | None = None) -> str:
    return build_order_answer(parse(message).msh, "AA", answers, problems or [], "ACK-C1", NOW)


def test_an_rre_has_err_and_nte_for_each_finding_and_one_orc_per_order() -> None:
    denied = decision(Outcome.DENIED, (Finding("PHARMACY_NOT_CERTIFIED", "not certified"),))
    text = answer(
        rde(orc(), rxe(), tq1()),
        OrderAnswer(1, "ORD-1", decision(Outcome.AUTHORIZED, rda=True)),
        OrderAnswer(2, "ORD-2", denied),
    )
    assert of(text, "MSH")[0][8] == "RRE^O12^RRE_O12"
    assert of(text, "MSA") == [["MSA", "AA", "C1"]]
    errs = [(e[2], e[4], e[5]) for e in of(text, "ERR")]
    assert errs == [
        ("ORC^1", "W", "ANC_OVERDUE^^L"),
        ("ORC^2", "E", "PHARMACY_NOT_CERTIFIED^^L"),
        ("ORC^2", "W", "ANC_OVERDUE^^L"),
    ]
    assert [n[3] for n in of(text, "NTE")][1] == "PHARMACY_NOT_CERTIFIED: not certified"
    first, second = of(text, "ORC")
    assert first[:4] == ["ORC", "OK", "ORD-1", "RDA-1^REMS"]
    assert first[16] == "authorized^Authorized^urn:rems-gateway:outcome"
    assert second[1] == "UA" and second[16].startswith("denied^")
    assert [s[0] for s in segments(text)] == [
        "MSH",
        "MSA",
        *["ERR"] * 3,
        *["NTE"] * 3,
        "ORC",
        "ORC",
    ]


def test_not_applicable_is_ok_and_rationale_required_is_ua() -> None:
    text = answer(
        rde(orc(), rxe(), tq1()),
        OrderAnswer(1, "A", decision(Outcome.NOT_APPLICABLE)),
        OrderAnswer(2, "B", decision(Outcome.RATIONALE_REQUIRED)),
    )
    assert [o[1] for o in of(text, "ORC")] == ["OK", "UA"]


def test_before_v2_5_the_err_is_err_1_and_msa_3_the_first_finding() -> None:
    v23 = fixture("rde-v23-local-code-zrx.hl7").decode()
    text = answer(v23, OrderAnswer(1, "RX23-ORD-77", decision(Outcome.AUTHORIZED)))
    assert of(text, "MSH")[0][8] == "RRE^O02"
    assert of(text, "MSA")[0][3] == "ANC_OVERDUE: ANC due"
    assert of(text, "ERR")[0][1] == "ORC^1^0&Message accepted&HL70357&ANC_OVERDUE&&L"


@pytest.mark.parametrize("name", ["rde-v251-inpatient-tq1.hl7", "omp-v251-cpoe.hl7"])
def test_hl7apy_parses_each_answer_in_strict_mode(name: str) -> None:
    denied = decision(Outcome.DENIED, (Finding("PRESCRIBER_NOT_CERTIFIED", "not certified"),))
    text = answer(
        fixture(name).decode().replace("\n", "\r"),
        OrderAnswer(1, "P-1", decision(Outcome.AUTHORIZED, rda=True)),
        OrderAnswer(2, "P-2", denied),
        problems=[Hl7Problem("MSH^1^11", "101", "W", "PROCESSING_ID_MISSING", "taken as P")],
    )
    parsed = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    parsed.validate()
    assert parsed.msh.msh_9.value.startswith(("RRE^O12", "ORP^O10"))


# --- the intake, over MLLP ----------------------------------------------------------------------


def _registry() -> RegistryDocument:
    pharmacies = [
        {"npi": INPATIENT_PHARMACY, "enrollments": [{"setting": "inpatient", "certified": True}]},
        {"npi": OUTPATIENT_PHARMACY, "enrollments": [{"setting": "outpatient", "certified": True}]},
    ]
    patient = {
        "id": "P1",
        "identifiers": [{"system": MRN_SYSTEM, "value": "RDE-FIXTURE-1"}],
        "name": {"family": "Doe", "given": "Pat"},
        "treatment_start": "2021-06-01",
        "enrollment": {
            "by": PRESCRIBER,
            "date": "2022-03-01",
            "anc": {"value": "2100", "unit": "/uL", "drawn": "2022-03-09T08:00:00Z"},
        },
    }
    return RegistryDocument.model_validate(
        {
            "prescribers": [{"npi": PRESCRIBER, "certified": True}],
            "pharmacies": pharmacies,
            "patients": [patient],
        }
    )


@pytest.fixture
def loaded(service: RemsService) -> RemsService:
    run(service.load_registry(_registry(), Source("test")))
    return service


def exchange(service: RemsService, *messages: str | bytes) -> list[str]:
    async def body() -> list[str]:
        listener = Hl7Listener(service, SENDERS, PLAIN, "message")
        await listener.start()
        try:
            data = [m.encode() if isinstance(m, str) else m for m in messages]
            replies = await send("127.0.0.1", listener.server.port, data)
        finally:
            await listener.stop()
        return [r.decode() for r in replies]

    return run(body())


def decisions(engine: Engine) -> int:
    with engine.connect() as conn:
        table = tables.DecisionRow.__table__
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_an_rde_over_mllp_is_decided_stored_and_answered_and_a_resend_gets_the_same_rre(
    loaded: RemsService, engine: Engine
) -> None:
    message = fixture("rde-v251-inpatient-tq1.hl7").replace(b"|AL|NE", b"||")
    first, again = exchange(loaded, message, message)
    assert of(first, "MSA") == [["MSA", "AA", "WRX-000117"]]
    (order,) = of(first, "ORC")
    assert order[1:3] == ["OK", "WRX-ORD-5501"] and order[3].endswith("^REMS")
    assert order[16].startswith("authorized^")
    assert again == first  # the stored answer, byte for byte
    assert decisions(engine) == 1


def test_enhanced_mode_sends_the_accept_ack_then_the_rre_even_with_ne(
    loaded: RemsService,
) -> None:
    always = rde(orc("ORD-E1", order_type="I"), rxe(pharmacy=INPATIENT_PHARMACY), tq1())
    never = always.replace("|C1|", "|C2|").replace("ORD-E1", "ORD-E2")

    async def body() -> list[bytes | None]:
        listener = Hl7Listener(loaded, SENDERS, PLAIN, "message")
        await listener.start()
        try:
            async with connect("127.0.0.1", listener.server.port) as connection:
                await connection.send(always.replace("2.5.1", "2.5.1|||AL|AL").encode())
                replies = [await connection.reply(5), await connection.reply(5)]
                await connection.send(never.replace("2.5.1", "2.5.1|||NE|NE").encode())
                replies += [await connection.reply(5), await connection.reply(0.5)]
                return replies
        finally:
            await listener.stop()

    accept, rre, only_rre, nothing = run(body())
    assert accept is not None and of(accept.decode(), "MSA")[0][1] == "CA"
    assert rre is not None and of(rre.decode(), "MSA")[0][1] == "AA"
    assert of(rre.decode(), "ORC")[0][1] == "OK"
    assert only_rre is not None and of(only_rre.decode(), "MSH")[0][8] == "RRE^O12^RRE_O12"
    assert nothing is None


def test_a_placer_number_used_for_another_order_is_ae_with_no_decision(
    loaded: RemsService, engine: Engine
) -> None:
    week = rde(orc("ORD-X"), rxe(pharmacy=OUTPATIENT_PHARMACY), tq1("7^d"))
    month = week.replace("|C1|", "|C2|").replace("7^d", "30^d")
    first, second = exchange(loaded, week, month)
    assert of(first, "MSA")[0][1] == "AA"
    assert of(second, "MSA")[0][1] == "AE"
    assert ("ORC^1^2", "205", "E", "REQUEST_ID_CONFLICT^^L") in [
        (e[2], e[3].split("^")[0], e[4], e[5]) for e in of(second, "ERR")
    ]
    assert of(second, "ORC")[0][1:3] == ["UA", "ORD-X"]
    assert decisions(engine) == 1


def test_a_control_id_used_before_for_another_order_message_is_ae_not_try_again(
    loaded: RemsService, engine: Engine
) -> None:
    """The same MSH-10 with other content (a pharmacy system that restarted its counter): held
    as a conflict and answered AE with the reason, never AR 'try again later'."""
    first = rde(orc("ORD-Y1"), rxe(pharmacy=OUTPATIENT_PHARMACY), tq1("7^d"))
    other = first.replace("ORD-Y1", "ORD-Y2")
    answers = exchange(loaded, first, other)
    assert [of(a, "MSA")[0][1] for a in answers] == ["AA", "AE"]
    (err,) = of(answers[1], "ERR")
    assert (err[2], err[3].split("^")[0], err[4]) == ("MSH^1^10", "205", "E")
    assert of(answers[1], "ORC") == []
    assert decisions(engine) == 1


def test_an_order_naming_no_prescriber_is_checked_with_the_enrolling_one_and_warned(
    loaded: RemsService,
) -> None:
    (text,) = exchange(loaded, rde(orc(prescriber=""), rxe(pharmacy=OUTPATIENT_PHARMACY), tq1()))
    assert ("ORC^1^12", "W", "PRESCRIBER_FROM_REGISTRY^^L") in [
        (e[2], e[4], e[5]) for e in of(text, "ERR")
    ]
    assert of(text, "ORC")[0][16].startswith("authorized^")


def test_an_omp_gets_an_orp_with_one_orc_per_order(loaded: RemsService) -> None:
    (text,) = exchange(loaded, fixture("omp-v251-cpoe.hl7"))
    assert of(text, "MSH")[0][8] == "ORP^O10^ORP_O10"
    clozapine, other = of(text, "ORC")
    assert clozapine[1:3] == ["OK", "CPOE-7731"] and clozapine[16].startswith("authorized^")
    assert other[1] == "OK" and other[16].startswith("not_applicable^")


def test_an_rds_is_filed_against_its_rda_once_and_answered_rrd(loaded: RemsService) -> None:
    (rre,) = exchange(loaded, rde(orc("ORD-L1"), rxe(pharmacy=OUTPATIENT_PHARMACY), tq1()))
    rda = of(rre, "ORC")[0][3].split("^")[0]
    rds = fixture("rds-v251-retail-dispense.hl7").decode()
    rds = rds.replace("WRX-ORD-5501", "ORD-L1").replace("RDA-0001", rda)
    later = rds.replace("MS-DISP-20931", "MS-DISP-20932").replace("142000-0500", "150000-0500")
    recorded, resent, refused = exchange(loaded, rds, rds, later)
    assert of(recorded, "MSH")[0][8] == "RRD^O14^RRD_O14"
    assert of(recorded, "ORC")[0][1:4] == ["OK", "ORD-L1", f"{rda}^REMS"]
    assert resent == recorded  # the stored answer
    assert of(refused, "MSA")[0][1] == "AA"
    assert of(refused, "ORC")[0][1] == "UA"
    assert [e[5] for e in of(refused, "ERR")] == ["RDA_ALREADY_DISPENSED^^L"]


def test_a_cancel_voids_the_rda_and_an_unknown_order_is_uc(loaded: RemsService) -> None:
    order = rde(orc("ORD-L2"), rxe(pharmacy=OUTPATIENT_PHARMACY), tq1())
    cancel = order.replace("ORC|NW", "ORC|CA", 1).replace("|C1|", "|C2|")
    unknown = cancel.replace("ORD-L2", "ORD-L9").replace("|C2|", "|C3|")
    rre, cr, uc = exchange(loaded, order, cancel, unknown)
    rda = of(rre, "ORC")[0][3].split("^")[0]
    assert of(cr, "ORC")[0][1:3] == ["CR", "ORD-L2"]
    assert of(uc, "ORC")[0][1:3] == ["UC", "ORD-L9"]
    assert [e[5] for e in of(uc, "ERR")] == ["ORDER_NOT_FOUND^^L"]
    rds = fixture("rds-v251-retail-dispense.hl7").decode()
    (voided,) = exchange(loaded, rds.replace("WRX-ORD-5501", "ORD-L2").replace("RDA-0001", rda))
    assert of(voided, "ORC")[0][1] == "UA"
    assert [e[5] for e in of(voided, "ERR")] == ["RDA_VOIDED^^L"]


# --- an order's end and a dispense record ------------------------------------------------------


def test_an_rds_names_its_rda_drug_amount_and_days_supply() -> None:
    message = parse(fixture("rds-v251-retail-dispense.hl7"))
    record = to_dispense_record(message, RETAILRX, NOW, UTC)
    assert (record.rda, record.request_id) == ("RDA-0001", "WRX-ORD-5501")
    assert record.drug == "197536"  # the RxNorm triplet beside the NDC
    assert (record.quantity, record.days_supply) == (Decimal(14), 7)
    assert record.dispensed_at == datetime(2022, 3, 11, 19, 20, tzinfo=UTC)
    assert record.pharmacy_npi == OUTPATIENT_PHARMACY


def test_an_rds_without_rxd_is_refused() -> None:
    text = fixture("rds-v251-retail-dispense.hl7").decode().split("\rRXD")[0] + "\r"
    with pytest.raises(OrderRejected):
        to_dispense_record(parse(text), WARDRX, NOW, UTC)


def test_an_order_s_end_is_answered_cr_dr_or_uc_ud_with_order_not_found() -> None:
    text = answer(
        rde(orc(), rxe(), tq1()),
        ended(1, "ORD-1", OrderAction.CANCEL, known=True),
        ended(2, "ORD-2", OrderAction.DISCONTINUE, known=True),
        ended(3, "ORD-3", OrderAction.CANCEL, known=False),
        ended(4, "ORD-4", OrderAction.DISCONTINUE, known=False),
    )
    assert [o[1:3] for o in of(text, "ORC")] == [
        ["CR", "ORD-1"], ["DR", "ORD-2"], ["UC", "ORD-3"], ["UD", "ORD-4"]
    ]  # fmt: skip
    assert [(e[2], e[3][:3], e[5]) for e in of(text, "ERR")] == [
        ("ORC^3^2", "204", "ORDER_NOT_FOUND^^L"),
        ("ORC^4^2", "204", "ORDER_NOT_FOUND^^L"),
    ]
    parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()


def test_an_rds_is_answered_rrd_o14_ok_when_recorded_and_ua_when_refused() -> None:
    rds = fixture("rds-v251-retail-dispense.hl7").decode()
    without = Hl7Problem("ORC^1^3", "0", "W", "DISPENSE_WITHOUT_RDA", "no RDA named")
    refused = Hl7Problem("ORC^1^3", "0", "E", "RDA_ALREADY_DISPENSED", "dispensed before")
    recorded = answer(rds, dispensed("WRX-ORD-5501", None, True, [without]))
    again = answer(rds, dispensed("WRX-ORD-5501", "RDA-0001", False, [refused]))
    assert of(recorded, "MSH")[0][8] == "RRD^O14^RRD_O14"
    assert of(recorded, "ORC")[0][1:4] == ["OK", "WRX-ORD-5501"]
    assert of(again, "ORC")[0][1:4] == ["UA", "WRX-ORD-5501", "RDA-0001^REMS"]
    assert [(e[4], e[5]) for e in of(again, "ERR")] == [("E", "RDA_ALREADY_DISPENSED^^L")]
    for text in (recorded, again):
        parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()


def test_send_takes_the_rre_after_the_accept_ack_as_an_order_s_answer(
    loaded: RemsService,
) -> None:
    order = rde(orc("ORD-S1", order_type="I"), rxe(pharmacy=INPATIENT_PHARMACY), tq1())
    always = order.replace("2.5.1", "2.5.1|||AL|AL")
    never = (
        order.replace("|C1|", "|C2|").replace("ORD-S1", "ORD-S2").replace("2.5.1", "2.5.1|||NE|NE")
    )
    lab = fixture("oru-v251-enhanced-no-ack.hl7")  # NE: nothing comes back, nothing waited for

    async def body() -> list:
        listener = Hl7Listener(loaded, SenderDirectory(accept_unknown=True), PLAIN, "message")
        await listener.start()
        try:
            outgoing = [outgoing_message(m.encode()) for m in (always, never)]
            outgoing.append(outgoing_message(lab.replace(b"\n", b"\r")))
            return await send_all("127.0.0.1", listener.server.port, outgoing, None, 5)
        finally:
            await listener.stop()

    first, second, third = run(body())
    for answered in (first, second):
        assert answered.ack is not None and answered.accepted
        assert of(answered.ack.decode(), "MSH")[0][8] == "RRE^O12^RRE_O12"
    assert third.ack is None
