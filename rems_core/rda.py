"""The RDA's life after it is issued (docs/contracts.md §4 "Pharmacy orders", §5): the order it
authorizes may be cancelled (the RDA is voided), the drug is dispensed against it at most once,
within its validity and its days supply, and it expires. What the channels hand the application
service for each, and the refusals."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum


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
    clozapine: bool  # whether the drug dispensed is clozapine (else it is acknowledged, ignored)
    drug: str  # the code as sent (RxNorm, NDC or local), for the record
    quantity: Decimal | None
    days_supply: int | None
    dispensed_at: datetime
    pharmacy_npi: str | None = None
