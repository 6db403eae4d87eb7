"""A consortium member's calls to `/gov` (api-version 2024-07-01): each request signed with the member's key
(`governance.member_client.MemberSigner`, the same bytes `ccf_cose_sign1` writes) and sent over HTTPS.

Every method returns the parsed answer or raises `ServiceError` with CCF's code and message. A proposal id may
be given as a unique prefix of its 64 hex digits (`full_proposal_id`), as people copy them from a terminal.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from governance.member_client import APPROVE_BALLOT, REJECT_BALLOT, MemberSigner
from governance.recovery_shares import decrypt_share
from network.client.connection import ClientError, ServiceClient

API_VERSION = "2024-07-01"
COSE = "application/cose"
PROPOSAL_ID_DIGITS = 64


class ProposalIdNotUnique(ClientError):
    """A shortened proposal id matches no proposal, or more than one."""


class MemberApi:
    def __init__(self, client: ServiceClient, signer: MemberSigner) -> None:
        self.client = client
        self.signer = signer

    @property
    def member_id(self) -> str:
        return self.signer.member_id

    def _path(self, path: str) -> str:
        return f"/gov{path}?api-version={API_VERSION}"

    def _post(self, path: str, body: bytes) -> Any:
        return self.client.json_ok("POST", self._path(path), body, content_type=COSE)

    def state_digest(self, created_at: int | None = None) -> dict[str, Any]:
        """Ask the node to record the current state digest for this member to acknowledge."""
        result: dict[str, Any] = self._post(f"/members/state-digests/{self.member_id}:update",
                                            self.signer.state_digest_update(created_at=created_at))
        return result

    def ack(self, digest: dict[str, Any] | None = None, created_at: int | None = None) -> None:
        """Acknowledge `digest` (by default a freshly recorded one): the member becomes Active."""
        digest = digest if digest is not None else self.state_digest(created_at)
        self._post(f"/members/state-digests/{self.member_id}:ack", self.signer.ack(digest, created_at=created_at))

    def activate(self) -> None:
        self.ack()

    def propose(self, actions: list[dict[str, Any]], created_at: int | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._post("/members/proposals:create",
                                            self.signer.proposal(actions, created_at=created_at))
        return result

    def vote(self, proposal_id: str, approve: bool = True, ballot: str | None = None,
             created_at: int | None = None) -> dict[str, Any]:
        source = ballot if ballot is not None else (APPROVE_BALLOT if approve else REJECT_BALLOT)
        result: dict[str, Any] = self._post(f"/members/proposals/{proposal_id}/ballots/{self.member_id}:submit",
                                            self.signer.ballot(proposal_id, source, created_at=created_at))
        return result

    def withdraw(self, proposal_id: str, created_at: int | None = None) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self._post(f"/members/proposals/{proposal_id}:withdraw",
                                                   self.signer.withdrawal(proposal_id, created_at=created_at))
        return result

    def proposal(self, proposal_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.client.json_ok("GET", self._path(f"/members/proposals/{proposal_id}"))
        return result

    def full_proposal_id(self, given: str) -> str:
        """The id of the one proposal whose id starts with `given` (trailing dots, as in `7ea51127...`, ignored).
        A full id is returned as it is, known or not: the node then says whether it knows it."""
        prefix = given.strip().rstrip(".").lower()
        if len(prefix) >= PROPOSAL_ID_DIGITS:
            return prefix
        if not prefix:
            raise ProposalIdNotUnique("give a proposal id (or a unique prefix of one)")
        matches = [str(p["proposalId"]) for p in self.proposals() if str(p["proposalId"]).startswith(prefix)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise ProposalIdNotUnique(f"no proposal id starts with {prefix} (a completed proposal is removed once "
                                      "a later proposal completes)")
        raise ProposalIdNotUnique(f"{len(matches)} proposal ids start with {prefix}: give more digits")

    def proposals(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.client.json_ok("GET", self._path("/members/proposals"))["value"]
        return result

    def service_info(self) -> dict[str, Any]:
        result: dict[str, Any] = self.client.json_ok("GET", self._path("/service/info"))
        return result

    def encrypted_recovery_share(self) -> str:
        """This member's recovery share, encrypted to its encryption key (base64)."""
        result: dict[str, Any] = self.client.json_ok(
            "GET", self._path(f"/recovery/encrypted-shares/{self.member_id}"))
        return str(result["encryptedShare"])

    def submit_recovery_share(self, encryption_key: rsa.RSAPrivateKey) -> dict[str, Any]:
        """Fetch this member's share, decrypt it with `encryption_key`, and submit it to the recovering service.
        Returns the answer: `message` ("k/N recovery shares successfully submitted", or "Full recovery key
        successfully submitted" from a recovery owner), `submittedCount`, `recoveryThreshold`, `fullKeySubmitted`."""
        share = decrypt_share(self.encrypted_recovery_share(), encryption_key)
        result: dict[str, Any] = self._post(f"/recovery/members/{self.member_id}:recover",
                                            self.signer.recovery_share(share))
        return result
