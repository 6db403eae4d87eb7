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
