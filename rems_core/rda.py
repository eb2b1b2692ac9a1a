"""The RDA's life after it is issued (docs/contracts.md §4 "Pharmacy orders", §5): the order it
authorizes may be cancelled (the RDA is voided), the drug is dispensed against it at most once,
within its validity and its days supply, and it expires. What the channels hand the application
service for each, and the refusals."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from rems_core.codes import Code, finding
from rems_core.model import Finding, Rda


class RdaState(StrEnum):
    ISSUED = "issued"
    DISPENSED = "dispensed"
    VOIDED = "voided"
    EXPIRED = "expired"


class OrderAction(StrEnum):
    """Why an order ends (HL7 ORC-1 `CA`/`DC`; FHIR MedicationRequest `cancelled`/`stopped`)."""

    CANCEL = "cancel"
    DISCONTINUE = "discontinue"


@dataclass(frozen=True)
class OrderEnd:
    """An order cancelled or discontinued: its RDA, if one was issued, is voided."""

    request_id: str  # the placer order number (HL7) or the MedicationRequest's request id (FHIR)
    action: OrderAction
    at: datetime


@dataclass(frozen=True)
class DispenseRecord:
    """A dispense as a pharmacy system reports it (HL7 RDS^O13, FHIR MedicationDispense)."""

    rda: str | None  # the RDA number it names (ORC-3, an identifier), if any
    request_id: str | None  # the order it fills (ORC-2, authorizingPrescription), if named
    drug: (
        str | None
    )  # RxNorm when readable (the service tells clozapine from other drugs), else as sent
    quantity: Decimal | None
    days_supply: int | None
    dispensed_at: datetime
    pharmacy_npi: str | None = None


class DispenseOutcome(StrEnum):
    RECORDED = "recorded"  # against its RDA, or (clozapine, no RDA known) with a warning
    REFUSED = "refused"  # the RDA does not allow it: stored with the refusals
    IGNORED = "ignored"  # not clozapine: nothing of the REMS applies


@dataclass(frozen=True)
class DispenseFiled:
    """What became of a dispense record: recorded (perhaps with DISPENSE_WITHOUT_RDA), refused
    with the RDA_* reasons, or ignored (not clozapine); the RDA it names and its state now."""

    outcome: DispenseOutcome
    reasons: tuple[Finding, ...] = ()
    warnings: tuple[Finding, ...] = ()
    rda: str | None = None
    rda_state: RdaState | None = None
    record_id: str | None = None  # the stored dispense record (None: ignored)
    again: bool = False  # the same record sent before: the stored answer


@dataclass(frozen=True)
class IssuedRda:
    """An RDA as stored: what it authorizes, its state, and when and why that state began."""

    rda: Rda
    decision_id: str
    state: RdaState = RdaState.ISSUED
    changed_at: datetime | None = None  # None: issued and never changed
    why: str = ""

    def state_at(self, at: datetime) -> RdaState:
        """An issued RDA past its validity is expired, whether or not the scheduler said so."""
        if self.state == RdaState.ISSUED and at > self.rda.valid_until:
            return RdaState.EXPIRED
        return self.state


_STATE_REFUSALS = {
    RdaState.DISPENSED: Code.RDA_ALREADY_DISPENSED,
    RdaState.VOIDED: Code.RDA_VOIDED,
    RdaState.EXPIRED: Code.RDA_EXPIRED,
}


def dispense_refusals(issued: IssuedRda, record: DispenseRecord) -> tuple[Finding, ...]:
    """docs/rules.md §6.4: an RDA is dispensed at most once, within its validity and its days
    supply; every reason it refuses this dispense (none: it may be recorded)."""
    number = issued.rda.number
    state = issued.state_at(record.dispensed_at)
    refusals: list[Finding] = []
    if state in _STATE_REFUSALS:
        expired = state == RdaState.EXPIRED or issued.changed_at is None
        since = issued.rda.valid_until if expired else issued.changed_at
        assert since is not None
        text = since.isoformat(timespec="minutes")
        refusals.append(finding(_STATE_REFUSALS[state], rda=number, since=text))
    supply = issued.rda.max_days_supply
    if record.days_supply is not None and record.days_supply > supply:
        refusals.append(
            finding(
                Code.RDA_SUPPLY_EXCEEDED, rda=number, authorized=supply, days=record.days_supply
            )
        )
    return tuple(refusals)
