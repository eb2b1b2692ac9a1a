"""Which FHIR resource types the endpoint takes, and how (docs/contracts.md §5)."""

from __future__ import annotations

#: Understood: read for their REMS effect. (A Specimen is too — it dates and names the
#: Observations of its Bundle — but is stored as received.)
UNDERSTOOD = frozenset({"Observation", "DiagnosticReport", "Patient"})

#: Types with REMS effects or roles of their own, taken only on their own endpoints: stored
#: from a Bundle they would lack the decision a reader expects.
ON_THEIR_OWN = {
    "MedicationRequest": "POST /fhir/MedicationRequest",
    "MedicationDispense": "POST /fhir/MedicationDispense",
    "QuestionnaireResponse": "POST /fhir/QuestionnaireResponse",
    "GuidanceResponse": "POST /fhir/GuidanceResponse/$rems-etasu",
    "Questionnaire": "GET /fhir/Questionnaire (the gateway's own)",
    "Task": "GET /fhir/Task (the gateway's worklist)",
    "Subscription": "POST /fhir/Subscription",
    "Bundle": "a Bundle of its own",
}

#: Stored as received and readable, with no REMS effect: the resource types of FHIR R4
#: (hl7.org/fhir/R4/resourcelist.html) that the R4B models also have, less the understood
#: ones, those taken on their own and the infrastructure ones (CapabilityStatement,
#: OperationOutcome, Parameters).
STORED_AS_RECEIVED = frozenset({
    "Account", "ActivityDefinition", "AdverseEvent", "AllergyIntolerance", "Appointment",
    "AppointmentResponse", "AuditEvent", "Basic", "Binary", "BiologicallyDerivedProduct",
    "BodyStructure", "CarePlan", "CareTeam", "CatalogEntry", "ChargeItem", "ChargeItemDefinition",
    "Claim", "ClaimResponse", "ClinicalImpression", "CodeSystem", "Communication",
    "CommunicationRequest", "CompartmentDefinition", "Composition", "ConceptMap", "Condition",
    "Consent", "Contract", "Coverage", "CoverageEligibilityRequest",
    "CoverageEligibilityResponse", "DetectedIssue", "Device", "DeviceDefinition", "DeviceMetric",
    "DeviceRequest", "DeviceUseStatement", "DocumentManifest", "DocumentReference", "Encounter",
    "Endpoint", "EnrollmentRequest", "EnrollmentResponse", "EpisodeOfCare", "EventDefinition",
    "Evidence", "EvidenceVariable", "ExampleScenario", "ExplanationOfBenefit",
    "FamilyMemberHistory", "Flag", "Goal", "GraphDefinition", "Group", "HealthcareService",
    "ImagingStudy", "Immunization", "ImmunizationEvaluation", "ImmunizationRecommendation",
    "ImplementationGuide", "InsurancePlan", "Invoice", "Library", "Linkage", "List", "Location",
    "Measure", "MeasureReport", "Media", "Medication", "MedicationAdministration",
    "MedicationKnowledge", "MedicationStatement", "MessageDefinition", "MessageHeader",
    "MolecularSequence", "NamingSystem", "NutritionOrder", "ObservationDefinition",
    "OperationDefinition", "Organization", "OrganizationAffiliation", "PaymentNotice",
    "PaymentReconciliation", "Person", "PlanDefinition", "Practitioner", "PractitionerRole",
    "Procedure", "Provenance", "RelatedPerson", "RequestGroup", "ResearchDefinition",
    "ResearchElementDefinition", "ResearchStudy", "ResearchSubject", "RiskAssessment", "Schedule",
    "SearchParameter", "ServiceRequest", "Slot", "Specimen", "SpecimenDefinition",
    "StructureDefinition", "StructureMap", "Substance", "SupplyDelivery",
    "SupplyRequest", "TerminologyCapabilities", "TestReport", "TestScript", "ValueSet",
    "VerificationResult", "VisionPrescription",
})  # fmt: skip


TAKEN_IN_BUNDLES = UNDERSTOOD | STORED_AS_RECEIVED
