"""What the console's tests look at: a registry patient with ANCs from HL7 messages, a result of
nobody held for review, and a message whose patient name is a script."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.app.service import RemsService
from gateway.app.values import Source
from rems_core.model import Identifier
from rems_core.registry import RegistryDocument
from rems_core.store.console_repo import MessageQuery
from rems_core.store.review_repo import ReviewFilter
from tests.builders import dispense
from tests.conftest import committed, run
from tests.test_review import oru, receive, registry

TOKEN = "console-test-token"
FAMILY, GIVEN, BORN, MRN = "CONSOLEFAMILY", "ANNA", "1961-07-14", "MRN4711"
HOSTILE = "<script>alert(1)</script>"


@dataclass(frozen=True)
class Seeded:
    patient: str
    held: str  # the unmatched review item
    hostile_message: int  # the stored message whose PID-5 is a script
    ancs: int  # how many ANCs the patient has
    outcome: str  # of the patient's one dispense decision


def hostile_oru(control: str) -> bytes:
    segments = [
        f"MSH|^~\\&|LIS|GH|REMS|REMS|202112030800||ORU^R01^ORU_R01|{control}|P|2.5.1",
        f"PID|1||{MRN}^^^GH^MR||{HOSTILE}^JANE",
        f"OBR|1||ACC-{control}|57021-8^CBC^LN|||202112030800",
        "OBX|1|NM|751-8^Neutrophils^LN||1.7|10*3/uL|||||F|||202112030800",
    ]
    return ("\r".join(segments) + "\r").encode()


def seed(service: RemsService) -> Seeded:
    """Patient P1 (MRN4711 of GH, named and born): the enrollment ANC, two ANCs by ORU and the
    hostile message's; one ORU of an unknown MRN, held for review; one dispense decision."""
    plain = registry(("P1", [("GH", MRN)])).model_dump(mode="json", by_alias=True)
    plain["patients"][0] |= {"name": {"family": FAMILY, "given": GIVEN}, "birth_date": BORN}
    ids = run(service.load_registry(RegistryDocument.model_validate(plain), Source("test")))
    receive(service, oru(f"{MRN}^^^GH^MR", "C-1", "1.2", "202112010800"))
    receive(service, oru(f"{MRN}^^^GH^MR", "C-2", "0.8", "202112020800"))
    receive(service, hostile_oru("C-3"))
    receive(service, oru("NOBODY77^^^GH^MR", "C-4", "2.2", "202112020900"))
    pharmacy = Source("test", "pharmacy")
    request = dispense("2021-12-04T10:00", request_id="RX-CONSOLE-1")
    decision = run(service.decide_dispense([Identifier("GH", MRN)], request, pharmacy))
    items, _ = committed(service, lambda store: store.review_items(ReviewFilter()))
    messages, _ = committed(service, lambda store: store.messages(MessageQuery(count=100)))
    hostile = next(m["id"] for m in messages if m["control_id"] == "C-3")
    ancs = committed(service, lambda store: store.anc_results(ids["P1"]))
    return Seeded(ids["P1"], items[0]["id"], hostile, len(ancs), decision.outcome.value)
