"""What the application service refuses, one exception each; every edge answers them from its
own table (HTTP status and FHIR issue code, HL7 ACK code)."""

from __future__ import annotations

from rems_core.model import PsfStatus


class VersionConflict(Exception):
    """If-Match named another version than the current one (412)."""


class UnknownResource(Exception):
    """An update of a resource that does not exist (404: the server does no update-as-create)."""


class IdentifierTaken(Exception):
    """An update gives a resource the business identifier of another one (409)."""


class TransactionRefused(Exception):
    """A transaction entry names a Patient/{id} the gateway does not know: nothing is stored."""

    def __init__(self, unknown_patients: list[str]) -> None:
        super().__init__("unknown patient")
        self.unknown_patients = unknown_patients


class UnknownPatient(LookupError):
    """The check names the gateway's Patient/{id}, and there is none."""


class UnknownSubject(Exception):
    """The subject names a Patient/{id} the gateway does not know."""


class NotPending(Exception):
    """The form is not waiting for a signature (any more)."""

    def __init__(self, status: PsfStatus | None) -> None:
        super().__init__(status.value if status else "unknown")
        self.status = status


class Changed(Exception):
    """The QuestionnaireResponse has a newer version than the one the signer saw."""


class RequestConflict(ValueError):
    """The same request id arrived with a different body."""
