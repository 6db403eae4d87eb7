"""The one exception tree of the `governance` package.

Every error carries CCF's error `code` (the string CCF puts in `{"error": {"code", "message"}}`); the
frontends map error classes to HTTP status codes, governance never does.
"""

from __future__ import annotations


class GovernanceError(Exception):
    """Base of every governance error; `code` is CCF's error code."""

    code = "InternalError"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class AuthenticationFailed(GovernanceError):
    """The request is not a valid COSE Sign1 from an acceptable member (CCF answers 401)."""

    code = "InvalidAuthenticationInfo"


class InvalidRequest(GovernanceError):
    """A well-authenticated request that is malformed or not allowed as it stands (CCF answers 400)."""

    code = "InvalidInput"


class ProposalReplay(InvalidRequest):
    code = "ProposalReplay"


class ProposalCreatedTooLongAgo(InvalidRequest):
    code = "ProposalCreatedTooLongAgo"


class InvalidCreatedAt(InvalidRequest):
    code = "InvalidCreatedAt"


class InvalidResourceName(InvalidRequest):
    code = "InvalidResourceName"


class ProposalFailedToValidate(InvalidRequest):
    code = "ProposalFailedToValidate"


class ProposalNotOpen(InvalidRequest):
    code = "ProposalNotOpen"


class VoteAlreadyExists(InvalidRequest):
    code = "VoteAlreadyExists"


class NotFound(GovernanceError):
    """The named proposal, ballot or record does not exist (CCF answers 404)."""

    code = "ResourceNotFound"


class ProposalNotFound(NotFound):
    code = "ProposalNotFound"


class VoteNotFound(NotFound):
    code = "VoteNotFound"


class AuthorizationFailed(GovernanceError):
    """Authenticated, but not allowed to do this (CCF answers 403)."""

    code = "AuthorizationFailed"


class ConstitutionFailure(GovernanceError):
    """The constitution could not decide: validate threw, or a proposal ended Failed (CCF answers 500).

    The caller must abandon the transaction: nothing of the request is recorded.
    """

    code = "InternalError"

    def __init__(self, message: str, *, proposal: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.proposal = proposal


class StateDigestMismatch(InvalidRequest):
    code = "StateDigestMismatch"
