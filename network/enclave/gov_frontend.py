"""The `/gov` frontend: CCF's governance API (api-version 2024-07-01) over HTTP.

Each handler maps one HTTP call onto a governance function running on the request's transaction;
governance decides, this module only translates. It owns the HTTP side of governance:
- `?api-version=` is required on the governance calls: missing → 400 `MissingApiVersionParameter`, unknown →
  400 `UnsupportedApiVersionValue` (the common `/gov/commit`, `/gov/tx`, `/gov/api` take none);
- signed calls need `content-type: application/cose` (else 415 `UnsupportedContentType`);
- governance's typed errors become statuses here and only here: authentication 401, bad request 400,
  not found 404, not allowed 403, constitution failure 500. A failing call's transaction is discarded,
  so nothing of it is recorded;
- effects asked for by `apply` (open the service, rekey, ...) are handed to the node in `ctx.effects`.

Recovery shares are taken in while a recovering service waits for them; the node combines them at the
threshold (`GovNode.recovery_shares_complete`).
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from governance import acks, proposals, recovery_shares
from governance.errors import (
    AuthenticationFailed,
    AuthorizationFailed,
    GovernanceError,
    InvalidRequest,
    NotFound,
)
from governance.proposals import NodeServices
from governance.requests import MessageType, SignedRequest, verify_request
from ledger.kv import Tx
from ledger.tables import (
    MEMBERS_CERTS,
    MEMBERS_ENCRYPTION_KEYS,
    MEMBERS_INFO,
    NODES_ENDORSED_CERTS,
    NODES_INFO,
    SERVICE_CONFIG,
    SERVICE_INFO,
    SINGLETON_KEY,
    USERS_CERTS,
    USERS_INFO,
    VIRTUAL_HOST_DATA,
    VIRTUAL_MEASUREMENTS,
)
from network.enclave.auth import JWT_KEYS
from network.enclave.common_endpoints import LedgerView, add_common_endpoints, parse_txid, tx_status
from network.enclave.endpoints import EndpointContext, EndpointError, Endpoints, Mode
from network.enclave.http import Response

API_VERSIONS = ("2023-06-01-preview", "2024-07-01")
COSE_CONTENT_TYPE = "application/cose"


class GovNode(Protocol):
    """What the governance handlers need from the node."""

    def root_at(self, version: int) -> bytes: ...

    def node_services(self) -> NodeServices: ...

    def private_recovery_begun(self) -> bool: ...

    def recovery_shares_complete(self, tx: Tx) -> None:
        """The threshold is reached: unwrap the previous service's secrets (`RecoverySharesError` if wrong)."""


def status_of(error: GovernanceError) -> int:
    if isinstance(error, AuthenticationFailed):
        return 401
    if isinstance(error, InvalidRequest):
        return 400
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, AuthorizationFailed):
        return 403
    return 500


GovHandler = Callable[[EndpointContext], Any]


def _governed(fn: GovHandler) -> GovHandler:
    """Check `api-version`, and turn governance's errors into CCF's HTTP errors."""

    @functools.wraps(fn)
    def run(ctx: EndpointContext) -> Any:
        versions = ctx.query.get("api-version")
        if not versions:
            raise EndpointError(400, "MissingApiVersionParameter",
                                f"Query parameter 'api-version' is required. Supported: {', '.join(API_VERSIONS)}")
        if versions[0] not in API_VERSIONS:
            raise EndpointError(400, "UnsupportedApiVersionValue",
                                f"Unsupported api-version '{versions[0]}'. Supported: {', '.join(API_VERSIONS)}")
        try:
            return fn(ctx)
        except GovernanceError as e:
            raise EndpointError(status_of(e), e.code, e.message) from None

    return run


def _signed(ctx: EndpointContext, expected: MessageType, *, require_active: bool) -> SignedRequest:
    content_type = ctx.request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != COSE_CONTENT_TYPE:
        raise EndpointError(415, "UnsupportedContentType",
                            f"Unsupported content type '{content_type}'. Only {COSE_CONTENT_TYPE} is supported")
    return verify_request(ctx.tx, ctx.request.body, expected, require_active=require_active)


def _json_table(tx: Tx, table: str) -> dict[str, Any]:
    return {key.decode(): orjson.loads(raw) for key, raw in tx.items(table)}


def _service_info(tx: Tx, ledger: LedgerView) -> dict[str, Any]:
    info = tx.get_json(SERVICE_INFO, SINGLETON_KEY) or {}
    config = tx.get_json(SERVICE_CONFIG, SINGLETON_KEY) or {}
    out: dict[str, Any] = {
        "status": info.get("status"),
        "certificate": info.get("cert"),
        "recoveryCount": info.get("recovery_count", 0),
        "creationTransactionId": info.get("current_service_create_txid"),
        "serviceData": info.get("service_data"),
        "configuration": {
            "recoveryThreshold": config.get("recovery_threshold"),
            "maximumNodeCertificateValidityDays": config.get("maximum_node_certificate_validity_days"),
            "maximumServiceCertificateValidityDays": config.get("maximum_service_certificate_validity_days"),
            "recentCoseProposalsWindowSize": config.get("recent_cose_proposals_window_size"),
        },
    }
    version = info.get("previous_service_identity_version")
    view = ledger.view_of(version) if isinstance(version, int) else None
    if view is not None:  # a transaction id, as CCF gives it (its view is the one this ledger holds it in)
        out["previousServiceCreationTransactionId"] = f"{view}.{version}"
    return out


def _member(tx: Tx, member_id: str) -> dict[str, Any]:
    cert = tx.get(MEMBERS_CERTS, member_id)
    info = tx.get_json(MEMBERS_INFO, member_id)
    if cert is None or not isinstance(info, dict):
        raise NotFound(f"Member {member_id} does not exist.")
    out: dict[str, Any] = {"memberId": member_id, "status": info.get("status"), "memberData": info.get("member_data"),
                           "certificate": cert.decode(), "recoveryRole": "NonParticipant"}
    key = tx.get(MEMBERS_ENCRYPTION_KEYS, member_id)
    if key is not None:
        out["publicEncryptionKey"] = key.decode()
        out["recoveryRole"] = info.get("recovery_role", "Participant")
    return out


def _user(tx: Tx, user_id: str) -> dict[str, Any]:
    cert = tx.get(USERS_CERTS, user_id)
    if cert is None:
        raise NotFound(f"User {user_id} does not exist.")
    info = tx.get_json(USERS_INFO, user_id)
    data = info.get("user_data") if isinstance(info, dict) else None
    return {"userId": user_id, "certificate": cert.decode(), "userData": data}


def _node(tx: Tx, node_id: str) -> dict[str, Any]:
    info = tx.get_json(NODES_INFO, node_id)
    if not isinstance(info, dict):
        raise NotFound(f"Node {node_id} does not exist.")
    cert = tx.get(NODES_ENDORSED_CERTS, node_id)
    quote = dict(info.get("quote_info", {}))
    if quote.get("format") == "Insecure_Virtual":
        raw = base64.b64decode(quote.get("quote", ""))
        try:
            details = orjson.loads(raw)
        except orjson.JSONDecodeError:
            details = {}
        quote = {"format": quote["format"], "rawQuote": quote.get("quote", ""),
                 "details": {"measurement": details.get("measurement"), "reportData": details.get("report_data"),
                             "hostData": details.get("host_data")}}
    interfaces = info.get("rpc_interfaces", {})
    return {
        "nodeId": node_id, "status": info.get("status"), "nodeData": info.get("node_data"),
        "certificate": cert.decode() if cert is not None else None,
        "retiredCommitted": bool(info.get("retired_committed", False)), "quoteInfo": quote,
        "rpcInterfaces": {name: {"publishedAddress": i.get("published_address"), "protocol": "https"}
                          for name, i in interfaces.items()},
    }


def build_gov_frontend(ledger: LedgerView) -> Endpoints:
    """The `/gov` frontend; handlers reach the node through `ctx.node` (a `GovNode`)."""
    gov = Endpoints("/gov")
    add_common_endpoints(gov, ledger, "CCF Governance API")
    rw = Mode.READWRITE

    def node_of(ctx: EndpointContext) -> GovNode:
        node: GovNode = ctx.node
        return node

    # --- proposals ----------------------------------------------------------------------------------

    @gov.endpoint("POST", "/members/proposals:create", mode=rw)
    @_governed
    def create(ctx: EndpointContext) -> object:
        """Submit a proposal (COSE Sign1, type `proposal`, from an active member)."""
        request = _signed(ctx, MessageType.PROPOSAL, require_active=True)
        node = node_of(ctx)
        outcome = proposals.create_proposal(ctx.tx, request, node.root_at(ctx.tx.read_version),
                                            node.node_services())
        ctx.effects.extend(outcome.effects)
        return outcome.proposal

    @gov.endpoint("GET", "/members/proposals")
    @_governed
    def list_all(ctx: EndpointContext) -> object:
        """Every proposal still readable."""
        return {"value": proposals.list_proposals(ctx.tx)}

    @gov.endpoint("GET", "/members/proposals/{proposalId}")
    @_governed
    def get_one(ctx: EndpointContext) -> object:
        """One proposal."""
        return proposals.proposal_view(ctx.tx, ctx.params["proposalId"])

    @gov.endpoint("GET", "/members/proposals/{proposalId}/actions")
    @_governed
    def get_actions(ctx: EndpointContext) -> object:
        """The proposal body as submitted."""
        body = proposals.actions(ctx.tx, ctx.params["proposalId"])
        return Response(200, body, (("content-type", "application/json"),))

    @gov.endpoint("POST", "/members/proposals/{proposalId}:withdraw", mode=rw)
    @_governed
    def withdraw(ctx: EndpointContext) -> object:
        """Withdraw an Open proposal (its proposer only)."""
        request = _signed(ctx, MessageType.WITHDRAWAL, require_active=True)
        outcome = proposals.withdraw_proposal(ctx.tx, request, ctx.params["proposalId"])
        return Response(204) if outcome is None else outcome.proposal

    @gov.endpoint("POST", "/members/proposals/{proposalId}/ballots/{memberId}:submit", mode=rw)
    @_governed
    def submit(ctx: EndpointContext) -> object:
        """Submit a ballot."""
        request = _signed(ctx, MessageType.BALLOT, require_active=True)
        outcome = proposals.submit_ballot(ctx.tx, request, ctx.params["proposalId"], ctx.params["memberId"],
                                          node_of(ctx).node_services())
        ctx.effects.extend(outcome.effects)
        return outcome.proposal

    @gov.endpoint("GET", "/members/proposals/{proposalId}/ballots/{memberId}")
    @_governed
    def get_ballot(ctx: EndpointContext) -> object:
        """A member's ballot, as JavaScript."""
        source = proposals.ballot(ctx.tx, ctx.params["proposalId"], ctx.params["memberId"])
        return Response(200, source.encode(), (("content-type", "text/javascript"),))

    # --- member activation --------------------------------------------------------------------------

    @gov.endpoint("GET", "/members/state-digests/{memberId}")
    @_governed
    def get_digest(ctx: EndpointContext) -> object:
        """The state digest a member is to acknowledge."""
        return acks.state_digest(ctx.tx, ctx.params["memberId"])

    @gov.endpoint("POST", "/members/state-digests/{memberId}:update", mode=rw)
    @_governed
    def update_digest(ctx: EndpointContext) -> object:
        """Record the current state digest for the member."""
        request = _signed(ctx, MessageType.STATE_DIGEST, require_active=False)
        return acks.update_state_digest(ctx.tx, request, ctx.params["memberId"],
                                        node_of(ctx).root_at(ctx.tx.read_version))

    @gov.endpoint("POST", "/members/state-digests/{memberId}:ack", mode=rw)
    @_governed
    def ack(ctx: EndpointContext) -> object:
        """Acknowledge the state digest; the member becomes Active."""
        request = _signed(ctx, MessageType.ACK, require_active=False)
        ctx.effects.extend(acks.ack(ctx.tx, request, ctx.params["memberId"]))
        return Response(204)

    # --- recovery -----------------------------------------------------------------------------------

    @gov.endpoint("GET", "/recovery/encrypted-shares/{memberId}")
    @_governed
    def get_share(ctx: EndpointContext) -> object:
        """The member's encrypted recovery share."""
        return recovery_shares.encrypted_share(ctx.tx, ctx.params["memberId"])

    @gov.endpoint("POST", "/recovery/members/{memberId}:recover", mode=rw)
    @_governed
    def recover(ctx: EndpointContext) -> object:
        """Submit a decrypted recovery share (while a recovering service waits for shares)."""
        request = _signed(ctx, MessageType.RECOVERY_SHARE, require_active=True)
        node = node_of(ctx)
        info = ctx.tx.get_json(SERVICE_INFO, SINGLETON_KEY)
        if not isinstance(info, dict) or info.get("status") != "WaitingForRecoveryShares":
            raise AuthorizationFailed("Service is not waiting for recovery shares.",
                                      code="ServiceNotWaitingForRecoveryShares")
        if node.private_recovery_begun():
            raise AuthorizationFailed("Node is already recovering private ledger.", code="NodeAlreadyRecovering")
        if request.member_id != ctx.params["memberId"]:
            raise InvalidRequest(f"Member {request.member_id} cannot submit a share for member "
                                 f"{ctx.params['memberId']}", code="InvalidAuthenticationInfo")
        try:
            body = orjson.loads(request.payload)
        except orjson.JSONDecodeError:
            body = None
        share = recovery_shares.parse_share(body)
        submitted, threshold, full_key = recovery_shares.submit_share(ctx.tx, request.member_id, share)
        # (CCF's wording: an owner's full key says so; the counts otherwise, enough or not)
        message = ("Full recovery key successfully submitted" if full_key else
                   f"{submitted}/{threshold} recovery shares successfully submitted")
        if submitted >= threshold or full_key:
            try:
                node.recovery_shares_complete(ctx.tx)
            except recovery_shares.RecoverySharesError as e:
                # the wrong shares are cleared (and that is committed) so members can start over
                recovery_shares.clear_submitted_shares(ctx.tx)
                ctx.commit_on_error = True
                return Response.error(500, "InternalError", f"Failed to initiate private recovery: {e.message}")
            message += "\nEnd of recovery procedure initiated"
        return {"message": message, "submittedCount": submitted, "recoveryThreshold": threshold,
                "fullKeySubmitted": full_key}

    # --- service state ------------------------------------------------------------------------------

    @gov.endpoint("GET", "/service/constitution")
    @_governed
    def get_constitution(ctx: EndpointContext) -> object:
        """The constitution, as JavaScript."""
        return Response(200, proposals.constitution(ctx.tx).encode(), (("content-type", "text/javascript"),))

    @gov.endpoint("GET", "/service/info")
    @_governed
    def info(ctx: EndpointContext) -> object:
        """The service's status, certificate and configuration."""
        return _service_info(ctx.tx, ledger)

    @gov.endpoint("GET", "/service/members")
    @_governed
    def members(ctx: EndpointContext) -> object:
        """Every member."""
        return {"value": [_member(ctx.tx, k.decode()) for k in ctx.tx.keys(MEMBERS_CERTS)]}

    @gov.endpoint("GET", "/service/members/{memberId}")
    @_governed
    def member(ctx: EndpointContext) -> object:
        """One member."""
        return _member(ctx.tx, ctx.params["memberId"])

    @gov.endpoint("GET", "/service/users")
    @_governed
    def users(ctx: EndpointContext) -> object:
        """Every user."""
        return {"value": [_user(ctx.tx, k.decode()) for k in ctx.tx.keys(USERS_CERTS)]}

    @gov.endpoint("GET", "/service/users/{userId}")
    @_governed
    def user(ctx: EndpointContext) -> object:
        """One user."""
        return _user(ctx.tx, ctx.params["userId"])

    @gov.endpoint("GET", "/service/nodes")
    @_governed
    def nodes(ctx: EndpointContext) -> object:
        """Every node."""
        return {"value": [_node(ctx.tx, k.decode()) for k in ctx.tx.keys(NODES_INFO)]}

    @gov.endpoint("GET", "/service/nodes/{nodeId}")
    @_governed
    def node(ctx: EndpointContext) -> object:
        """One node."""
        return _node(ctx.tx, ctx.params["nodeId"])

    @gov.endpoint("GET", "/service/join-policy")
    @_governed
    def join_policy(ctx: EndpointContext) -> object:
        """What a joining node's quote must show."""
        return {"sgx": {"measurements": []},
                "virtual": {"measurements": [k.decode() for k in ctx.tx.keys(VIRTUAL_MEASUREMENTS)],
                            "hostData": [k.decode() for k in ctx.tx.keys(VIRTUAL_HOST_DATA)]},
                "snp": {"measurements": [], "hostData": {}, "uvmEndorsements": {}, "tcbVersions": {}}}

    @gov.endpoint("GET", "/service/jwk")
    @_governed
    def jwk(ctx: EndpointContext) -> object:
        """JWT issuers and their keys."""
        return {"issuers": _json_table(ctx.tx, "public:ccf.gov.jwt.issuers"),
                "keys": _json_table(ctx.tx, JWT_KEYS), "caCertBundles": {}}

    @gov.endpoint("GET", "/service/transactions/commit")
    @_governed
    def committed(ctx: EndpointContext) -> object:
        """The latest committed transaction."""
        seqno = ledger.committed_seqno
        return {"transactionId": f"{ledger.view_of(seqno) or 0}.{seqno}", "status": "Committed"}

    @gov.endpoint("GET", "/service/transactions/{transactionId}")
    @_governed
    def transaction(ctx: EndpointContext) -> object:
        """A transaction's status."""
        return {"status": tx_status(ledger, parse_txid(ctx.params["transactionId"])).value}

    return gov
