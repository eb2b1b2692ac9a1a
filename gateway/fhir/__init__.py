"""The FHIR R4 endpoint (base /fhir): routes translate, the application service decides."""
