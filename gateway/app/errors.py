"""What the application service refuses, one exception each; every edge answers them from its
own table (HTTP status and FHIR issue code, HL7 ACK code)."""

from __future__ import annotations

from rems_core.model import PsfStatus


class VersionConflict(Exception):
    """If-Match named another version than the current one (412)."""


class IdentifierTaken(Exception):
    """An update gives a resource the business identifier of another one (409)."""


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


class UnknownReviewItem(LookupError):
    """No review item has this id."""


class ReviewClosed(Exception):
    """The review item was linked, discarded or purged already."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class NotLinkable(ValueError):
    """The item cannot be linked as asked (its kind, or a patient or identifier it does not
    name); the message says why."""


class ClientIdTaken(Exception):
    """A PUT to a resource id that another client (or the gateway) created (409)."""


class BundleRefused(Exception):
    """A transaction Bundle's entries that cannot be stored (entry number → the refusal:
    VersionConflict, IdentifierTaken, ClientIdTaken): nothing of the Bundle is."""

    def __init__(self, refused: dict[int, Exception]) -> None:
        super().__init__(f"{len(refused)} entries refused")
        self.refused = refused


class UnknownResource(LookupError):
    """An update names a resource the gateway does not have, of a type that is never created by
    an update (404)."""


class NotADraft(Exception):
    """A PUT of a QuestionnaireResponse that is not one of the gateway's open monthly drafts: a
    new PSF is posted, a draft is completed by its update (409; 404 when none has the id)."""

    def __init__(self, known: bool) -> None:
        super().__init__("not an open draft" if known else "no such response")
        self.known = known


class UnknownCard(LookupError):
    """Feedback on a card this service did not answer (docs/contracts.md §6): 404."""
