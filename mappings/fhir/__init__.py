"""FHIR R4 ⇄ domain translators (validated with fhir.resources' R4B models at the boundary)."""
