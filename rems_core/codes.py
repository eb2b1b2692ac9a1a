"""Reason and warning codes, each with the sentence a pharmacist or prescriber reads."""

from __future__ import annotations

from enum import StrEnum

from rems_core.model import Finding


class Code(StrEnum):
    # §6.1 dispense checks
    PHARMACY_NOT_CERTIFIED = "PHARMACY_NOT_CERTIFIED"
    PATIENT_NOT_ENROLLED = "PATIENT_NOT_ENROLLED"
    PRESCRIBER_NOT_CERTIFIED = "PRESCRIBER_NOT_CERTIFIED"
    TREATMENT_INTERRUPTED = "TREATMENT_INTERRUPTED"
    TREATMENT_DISCONTINUED = "TREATMENT_DISCONTINUED"
    PSF_OUT_OF_WINDOW = "PSF_OUT_OF_WINDOW"
    ANC_BELOW_THRESHOLD = "ANC_BELOW_THRESHOLD"
    LABS_MISSED = "LABS_MISSED"
    # §6.2, §6.3
    PHARMACIST_OVERRIDE = "PHARMACIST_OVERRIDE"
    OVERRIDE_LIMIT_REACHED = "OVERRIDE_LIMIT_REACHED"
    OVERRIDE_INCOMPLETE = "OVERRIDE_INCOMPLETE"
    DISCHARGE_SUPPLY_EXCEEDS_LIMIT = "DISCHARGE_SUPPLY_EXCEEDS_LIMIT"
    NOT_CLOZAPINE = "NOT_CLOZAPINE"
    NO_RULE_PACK_FOR_DATE = "NO_RULE_PACK_FOR_DATE"
    # warnings
    ANC_OVERDUE = "ANC_OVERDUE"
    REENROLLMENT_DUE = "REENROLLMENT_DUE"
    LEGACY_ENROLLMENT_ENDED = "LEGACY_ENROLLMENT_ENDED"
    # §1 lab results
    ANC_UNIT_SUSPECT = "ANC_UNIT_SUSPECT"
    ANC_UNIT_UNKNOWN = "ANC_UNIT_UNKNOWN"
    ANC_VALUE_INVALID = "ANC_VALUE_INVALID"
    ANC_OUT_OF_RANGE = "ANC_OUT_OF_RANGE"
    CODE_TEXT_MISMATCH = "CODE_TEXT_MISMATCH"
    RESULT_PRELIMINARY = "RESULT_PRELIMINARY"
    RESULT_CANCELLED = "RESULT_CANCELLED"
    PATIENT_NOT_MATCHED = "PATIENT_NOT_MATCHED"
    PATIENT_AMBIGUOUS = "PATIENT_AMBIGUOUS"
    PATIENT_MERGE_REVIEW = "PATIENT_MERGE_REVIEW"
    # §4, §5 PSF
    SUBMITTER_NOT_AUTHORIZED = "SUBMITTER_NOT_AUTHORIZED"
    RATIONALE_REQUIRED = "RATIONALE_REQUIRED"
    RATIONALE_INCOMPLETE = "RATIONALE_INCOMPLETE"
    ENROLLMENT_ANC_MISSING_OR_OLD = "ENROLLMENT_ANC_MISSING_OR_OLD"
    PRESCRIBER_SIGNATURE_REQUIRED = "PRESCRIBER_SIGNATURE_REQUIRED"
    NO_PENDING_PSF = "NO_PENDING_PSF"
    PSF_CONFLICT = "PSF_CONFLICT"  # §5.7 double entry: another PSF for an accepted one's period
    PSF_REPEATED = "PSF_REPEATED"  # §5.7 the same PSF again: answered from the store
    MONITORING_LESS_FREQUENT_THAN_RECOMMENDED = "MONITORING_LESS_FREQUENT_THAN_RECOMMENDED"
    ANC_BELOW_INITIATION_THRESHOLD = "ANC_BELOW_INITIATION_THRESHOLD"
    # §6.4 the RDA's life: dispense records and an order's end
    RDA_ALREADY_DISPENSED = "RDA_ALREADY_DISPENSED"
    RDA_EXPIRED = "RDA_EXPIRED"
    RDA_VOIDED = "RDA_VOIDED"
    RDA_SUPPLY_EXCEEDED = "RDA_SUPPLY_EXCEEDED"
    DISPENSE_WITHOUT_RDA = "DISPENSE_WITHOUT_RDA"
    ORDER_NOT_FOUND = "ORDER_NOT_FOUND"
    # §10 shipments to pharmacies (wholesalers, distributors)
    WHOLESALER_NOT_CERTIFIED = "WHOLESALER_NOT_CERTIFIED"
    WHOLESALER_RECERTIFICATION_DUE = "WHOLESALER_RECERTIFICATION_DUE"
    SHIPMENT_CHECK_PAUSED = "SHIPMENT_CHECK_PAUSED"
    SHIPMENT_CHECK_NOT_APPLICABLE = "SHIPMENT_CHECK_NOT_APPLICABLE"


TEXT: dict[Code, str] = {
    Code.PHARMACY_NOT_CERTIFIED: "Pharmacy {pharmacy} has no certified {setting} enrollment.",
    Code.PATIENT_NOT_ENROLLED: "The patient is not enrolled in the Clozapine REMS{detail}.",
    Code.PRESCRIBER_NOT_CERTIFIED: (
        "Prescriber {prescriber} is not certified in the Clozapine REMS."
    ),
    Code.TREATMENT_INTERRUPTED: (
        "Treatment is interrupted per the Patient Status Form of {since}."
    ),
    Code.TREATMENT_DISCONTINUED: (
        "Treatment is discontinued per the Patient Status Form of {since}."
    ),
    Code.PSF_OUT_OF_WINDOW: (
        "No Patient Status Form in the last {days} days (last: {last}).{override}"
    ),
    Code.ANC_BELOW_THRESHOLD: (
        "ANC {anc}/µL drawn {drawn} is below {threshold}/µL ({population}); the prescriber's "
        "treatment rationale is needed to continue."
    ),
    Code.LABS_MISSED: (
        "No usable ANC for more than {days} days (newest: {newest}); the prescriber's treatment "
        "rationale is needed to continue."
    ),
    Code.PHARMACIST_OVERRIDE: (
        "Authorized by pharmacist override ({used} of {limit} in {window} days)."
    ),
    Code.OVERRIDE_LIMIT_REACHED: (
        "This patient already had {limit} pharmacist overrides in the last {window} days."
    ),
    Code.OVERRIDE_INCOMPLETE: "The pharmacist override is incomplete: {missing}.",
    Code.DISCHARGE_SUPPLY_EXCEEDS_LIMIT: (
        "A discharge supply from an inpatient-only pharmacy may be at most {cap} days "
        "({requested} requested)."
    ),
    Code.NOT_CLOZAPINE: "Drug {drug} is not clozapine; the REMS does not apply.",
    Code.NO_RULE_PACK_FOR_DATE: "{detail}",
    Code.ANC_OVERDUE: (
        "The newest ANC ({newest}) is older than the {frequency} monitoring interval "
        "of {days} days."
    ),
    Code.REENROLLMENT_DUE: ("Enrolled in the previous REMS system only: re-enroll by {deadline}."),
    Code.LEGACY_ENROLLMENT_ENDED: (
        "Enrolled in the previous REMS system only and not re-enrolled by {deadline}: "
        "not enrolled from now on."
    ),
    Code.ANC_UNIT_SUSPECT: (
        "Value {value} {unit} is implausible for that unit; not used until a person confirms it."
    ),
    Code.ANC_UNIT_UNKNOWN: "Unit {unit!r} is not a known unit for {code}; the result is not used.",
    Code.ANC_VALUE_INVALID: "Value {value!r} for {code} is not a number; the result is not used.",
    Code.ANC_OUT_OF_RANGE: "ANC {anc}/µL is outside {low:,}–{high:,}/µL; the result is rejected.",
    Code.CODE_TEXT_MISMATCH: (
        "Code {code} is labelled {label!r}, which names {analyte}: the result is not used."
    ),
    Code.RESULT_PRELIMINARY: "Preliminary result: stored, not used for decisions until final.",
    Code.RESULT_CANCELLED: "Cancelled result: the earlier value of this specimen is withdrawn.",
    Code.PATIENT_NOT_MATCHED: "No registry patient matches the identifiers; kept for review.",
    Code.PATIENT_AMBIGUOUS: (
        "The identifiers name different registry patients: nothing was filed; kept for review."
    ),
    Code.PATIENT_MERGE_REVIEW: (
        "The merge names two registry patients: nothing was merged; kept for review."
    ),
    Code.SUBMITTER_NOT_AUTHORIZED: "{submitter} may not submit for prescriber {prescriber}: {why}.",
    Code.RATIONALE_REQUIRED: "A prescriber's treatment rationale is required: {why}.",
    Code.RATIONALE_INCOMPLETE: "The treatment rationale is incomplete: {why}.",
    Code.ENROLLMENT_ANC_MISSING_OR_OLD: (
        "Enrollment needs a usable ANC drawn no more than {days} days before {date}."
    ),
    Code.PRESCRIBER_SIGNATURE_REQUIRED: ("Held for the certified prescriber's signature: {why}."),
    Code.NO_PENDING_PSF: "No Patient Status Form of this patient is waiting for a signature.",
    Code.PSF_CONFLICT: (
        "A different {type} PSF for this period was accepted on {accepted} (PSF {psf}): this one "
        "waits for the prescriber, who signs it to replace that one."
    ),
    Code.PSF_REPEATED: (
        "The same {type} PSF is on file since {recorded} (PSF {psf}): this one changes nothing."
    ),
    Code.MONITORING_LESS_FREQUENT_THAN_RECOMMENDED: (
        "Reported monitoring {reported} is less frequent than the recommended {recommended}."
    ),
    Code.ANC_BELOW_INITIATION_THRESHOLD: (
        "Enrollment ANC {anc}/µL is below the label's initiation threshold of {threshold}/µL."
    ),
    Code.RDA_ALREADY_DISPENSED: (
        "RDA {rda} was dispensed already ({since}); a refill needs a new dispense check."
    ),
    Code.RDA_EXPIRED: "RDA {rda} expired at {since}; a new dispense check is needed.",
    Code.RDA_VOIDED: "RDA {rda} was voided ({since}): its order was cancelled or discontinued.",
    Code.RDA_SUPPLY_EXCEEDED: (
        "RDA {rda} authorizes at most {authorized} days supply ({days} days dispensed)."
    ),
    Code.DISPENSE_WITHOUT_RDA: (
        "Clozapine dispensed without a known RDA ({named}): recorded for a pharmacist to review."
    ),
    Code.ORDER_NOT_FOUND: "No dispense decision is known for order {order}: nothing was voided.",
    # §10 shipments to pharmacies
    Code.WHOLESALER_NOT_CERTIFIED: "{party} is not certified on {day}: {why}.",
    Code.WHOLESALER_RECERTIFICATION_DUE: (
        "{party} must recertify by {by} ({days} days after {day}) to keep shipping clozapine."
    ),
    Code.SHIPMENT_CHECK_PAUSED: (
        "The wholesaler check is paused ({section}, enforcement discretion): the shipment may go "
        "ahead, though it would have been refused for {failed}."
    ),
    Code.SHIPMENT_CHECK_NOT_APPLICABLE: (
        "The Clozapine REMS ended ({section}): no certification is needed to ship clozapine."
    ),
}


def finding(code: Code, /, **details: object) -> Finding:
    return Finding(str(code), TEXT[code].format(**details))
