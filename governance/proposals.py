"""The proposal lifecycle of CCF's governance API 2024-07-01, as functions over a
KV transaction.

- `create_proposal`: the constitution's `validate` (400 `ProposalFailedToValidate` unless valid), replay
  protection, the proposal stored (`public:ccf.gov.proposals` = raw body, `...proposals_info` = state,
  proposer, ballots), and resolved at once.
- `submit_ballot`: one ballot per member (the same text again changes nothing, another is
  `VoteAlreadyExists`), then the proposal is resolved again.
- Resolution: every stored ballot's `vote(proposal, proposerId)` runs read-only (one that throws goes to
  `vote_failures`), then `resolve(proposal, proposerId, votes, proposalId)` must return "Open", "Accepted"
  or "Rejected". Leaving Open freezes `final_votes` and `vote_failures` and deletes every other non-Open
  proposal; Accepted runs `apply(proposal, proposalId)` in the same transaction.
- A proposal that ends Failed raises `ConstitutionFailure`: the caller abandons the transaction, so
  nothing of the request is recorded (CCF answers 500 and discards the transaction).
- `withdraw_proposal` (proposer only), and the read side: `proposal_view`, `list_proposals`, `actions`,
  `ballot`.

Results use the camelCase shapes of the REST API; the node carries out the returned effects after commit.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import orjson

from governance.errors import (
    AuthorizationFailed,
    ConstitutionFailure,
    InvalidRequest,
    InvalidResourceName,
    ProposalFailedToValidate,
    ProposalNotFound,
    ProposalNotOpen,
    VoteAlreadyExists,
    VoteNotFound,
)
from governance.js_host import HostCall
from governance.js_runtime import TIMEOUT_REASON, Effect, JSCallFailed, JSLimits, apply_writes, call_export
from governance.recent_proposals import proposal_id as compute_proposal_id
from governance.recent_proposals import record_proposal_submission
from governance.requests import SignedRequest, record_request
from governance.tables import PROPOSALS, PROPOSALS_INFO
from ledger.kv import Tx
from ledger.tables import CONSTITUTION, SINGLETON_KEY

JS_RUNTIME_OPTIONS = "public:ccf.gov.js_runtime_options"


class ProposalState(enum.Enum):
    OPEN = "Open"
    ACCEPTED = "Accepted"
    WITHDRAWN = "Withdrawn"
    REJECTED = "Rejected"
    FAILED = "Failed"
    DROPPED = "Dropped"


@dataclass(frozen=True)
class Failure:
    reason: str
    trace: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason} if self.trace is None else {"reason": self.reason, "trace": self.trace}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Failure:
        return cls(str(obj["reason"]), obj.get("trace"))


@dataclass(frozen=True)
class ProposalInfo:
    """The value of `public:ccf.gov.proposals_info` (snake_case, as CCF stores it)."""

    proposer_id: str
    state: ProposalState
    ballots: dict[str, str] = field(default_factory=dict)
    final_votes: dict[str, bool] | None = None
    vote_failures: dict[str, Failure] | None = None
    failure: Failure | None = None

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"ballots": self.ballots, "proposer_id": self.proposer_id, "state": self.state.value}
        if self.final_votes is not None:
            obj["final_votes"] = self.final_votes
        if self.vote_failures is not None:
            obj["vote_failures"] = {m: f.to_json() for m, f in self.vote_failures.items()}
        if self.failure is not None:
            obj["failure"] = self.failure.to_json()
        return obj

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ProposalInfo:
        failures = obj.get("vote_failures")
        return cls(
            proposer_id=str(obj["proposer_id"]),
            state=ProposalState(obj["state"]),
            ballots=dict(obj.get("ballots", {})),
            final_votes=obj.get("final_votes"),
            vote_failures=None if failures is None else {m: Failure.from_json(f) for m, f in failures.items()},
            failure=None if obj.get("failure") is None else Failure.from_json(obj["failure"]),
        )

    def to_api(self, proposal_id: str) -> dict[str, Any]:
        """The REST API's Proposal (camelCase)."""
        obj: dict[str, Any] = {"ballotCount": len(self.ballots), "proposalId": proposal_id,
                               "proposalState": self.state.value, "proposerId": self.proposer_id}
        if self.final_votes is not None:
            obj["finalVotes"] = self.final_votes
        if self.vote_failures is not None:
            obj["voteFailures"] = {m: f.to_json() for m, f in self.vote_failures.items()}
        if self.failure is not None:
            obj["failure"] = self.failure.to_json()
        return obj


@dataclass(frozen=True)
class Outcome:
    """What a governance write did: the proposal as the API shows it, and effects for the node."""

    proposal_id: str
    proposal: dict[str, Any]
    effects: tuple[Effect, ...] = ()


# --- reading -------------------------------------------------------------------------------------------


def _info(tx: Tx, proposal_id: str) -> ProposalInfo | None:
    raw = tx.get_json(PROPOSALS_INFO, proposal_id)
    return None if raw is None else ProposalInfo.from_json(raw)


def _existing(tx: Tx, proposal_id: str) -> ProposalInfo:
    info = _info(tx, proposal_id)
    if info is None:
        raise ProposalNotFound(f"Could not find proposal {proposal_id}.")
    return info


def proposal_view(tx: Tx, proposal_id: str) -> dict[str, Any]:
    info = _existing(tx, proposal_id)
    return info.to_api(proposal_id)


def list_proposals(tx: Tx) -> list[dict[str, Any]]:
    return [ProposalInfo.from_json(orjson.loads(raw)).to_api(key.decode()) for key, raw in tx.items(PROPOSALS_INFO)]


def actions(tx: Tx, proposal_id: str) -> bytes:
    """The proposal body exactly as submitted."""
    body = tx.get(PROPOSALS, proposal_id)
    if body is None:
        raise ProposalNotFound(f"Could not find proposal {proposal_id}.")
    return body


def ballot(tx: Tx, proposal_id: str, member_id: str) -> str:
    info = _existing(tx, proposal_id)
    if member_id not in info.ballots:
        raise VoteNotFound(f"Member {member_id} has not voted for proposal {proposal_id}.")
    return info.ballots[member_id]


# --- the constitution ------------------------------------------------------------------------------------


def constitution(tx: Tx) -> str:
    source = tx.get_json(CONSTITUTION, SINGLETON_KEY)
    if not isinstance(source, str):
        raise ConstitutionFailure("No constitution is set - proposals cannot be evaluated")
    return source


# What js_runtime_options may raise the limits to: far above any sane governance code, far below what
# would overflow QuickJS or remove the time limit (a bad value must not stop governance for good).
_MAX_HEAP_BYTES = 1 << 31
_MAX_STACK_BYTES = 64 << 20
_MAX_EXECUTION_TIME_MS = 10 * 60 * 1000


def runtime_options(tx: Tx, defaults: JSLimits) -> JSLimits:
    """The limits `public:ccf.gov.js_runtime_options` sets, each bounded; anything that is not a positive integer
    falls back to `defaults`."""
    options = tx.get_json(JS_RUNTIME_OPTIONS, SINGLETON_KEY)
    if not isinstance(options, dict):
        return defaults

    def bounded(name: str, default: int, cap: int) -> int:
        value = options.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            return default
        return min(value, cap)

    return JSLimits(
        bounded("max_heap_bytes", defaults.max_heap_bytes, _MAX_HEAP_BYTES),
        bounded("max_stack_bytes", defaults.max_stack_bytes, _MAX_STACK_BYTES),
        bounded("max_execution_time_ms", defaults.max_execution_time_ms, _MAX_EXECUTION_TIME_MS),
    )


def js_limits(tx: Tx) -> JSLimits:
    """The limits for governance code: the runtime options, never below CCF's defaults for governance."""
    return runtime_options(tx, JSLimits()).at_least_defaults()


def _js_string(value: Any) -> str:
    """How JavaScript's String() shows a returned value (for CCF's resolve() error message)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "[object Object]"
    if isinstance(value, list):
        return ",".join(_js_string(v) for v in value)
    return orjson.dumps(value).decode()


def _failure(e: JSCallFailed) -> Failure:
    return Failure(e.reason, e.trace)


@dataclass(frozen=True)
class NodeServices:
    """What the node lends to `apply`: values for `ccf.network.*` and its host calls (e.g. certificates)."""

    values: dict[str, Any] = field(default_factory=dict)
    calls: dict[str, HostCall] = field(default_factory=dict)


def _resolve(
    tx: Tx, proposal_id: str, info: ProposalInfo, node: NodeServices
) -> tuple[ProposalInfo, tuple[Effect, ...]]:
    """Run the ballots and `resolve`, then `apply` if Accepted, as CCF does."""
    source = constitution(tx)
    limits = js_limits(tx)
    body = actions(tx, proposal_id).decode()
    votes: dict[str, bool] = {}
    vote_failures: dict[str, Failure] = {}
    for member_id in sorted(info.ballots):
        try:
            result = call_export(info.ballots[member_id], "vote", [body, info.proposer_id], tx, limits=limits,
                                 crypto=False)
            votes[member_id] = result.value is True
        except JSCallFailed as e:
            vote_failures[member_id] = _failure(e)
    state = ProposalState.OPEN
    failure: Failure | None = None
    try:
        resolved = call_export(source, "resolve", [body, info.proposer_id,
                                                   [{"member_id": m, "vote": v} for m, v in votes.items()],
                                                   proposal_id], tx, limits=limits, crypto=False)
        try:
            state = ProposalState(resolved.value)
            if state not in (ProposalState.OPEN, ProposalState.ACCEPTED, ProposalState.REJECTED):
                raise ValueError(state)
        except (ValueError, TypeError):
            state = ProposalState.FAILED
            failure = Failure(f'resolve() returned invalid status value: "{_js_string(resolved.value)}"')
    except JSCallFailed as e:
        state = ProposalState.FAILED
        failure = Failure(f"Failed to resolve(): {e.reason}", e.trace)
    info = ProposalInfo(info.proposer_id, state, info.ballots, None, None, failure)
    effects: tuple[Effect, ...] = ()
    if state is not ProposalState.OPEN:
        _remove_other_completed(tx, proposal_id)
        info = ProposalInfo(info.proposer_id, state, info.ballots, votes, vote_failures, failure)
        if state is ProposalState.ACCEPTED:
            try:
                applied = call_export(source, "apply", [body, proposal_id], tx, writable=True, limits=limits,
                                      host=node.values, host_calls=node.calls)
                apply_writes(tx, applied.writes)
                effects = applied.effects
            except JSCallFailed as e:
                info = ProposalInfo(info.proposer_id, ProposalState.FAILED, info.ballots, votes, vote_failures,
                                    Failure(f"Failed to apply(): {e.reason}", e.trace))
    tx.put_json(PROPOSALS_INFO, proposal_id, info.to_json())
    if info.state is ProposalState.FAILED:
        assert info.failure is not None
        raise ConstitutionFailure(info.failure.reason, proposal=info.to_api(proposal_id))
    return info, effects


def _remove_other_completed(tx: Tx, proposal_id: str) -> None:
    for key, raw in list(tx.items(PROPOSALS_INFO)):
        if key.decode() != proposal_id and orjson.loads(raw)["state"] != ProposalState.OPEN.value:
            tx.remove(PROPOSALS_INFO, key)
            tx.remove(PROPOSALS, key)


# --- writing ---------------------------------------------------------------------------------------------


def create_proposal(tx: Tx, request: SignedRequest, root_at_read: bytes,
                    node: NodeServices | None = None) -> Outcome:
    """Validate, store and resolve a proposal; see the module docstring for what can fail."""
    pid = compute_proposal_id(root_at_read, request.signature)
    source = constitution(tx)
    try:
        body = request.payload.decode()
    except UnicodeDecodeError:
        raise InvalidRequest("Proposal body is not UTF-8") from None
    try:
        validation = call_export(source, "validate", [body], tx, limits=js_limits(tx))
    except JSCallFailed as e:
        reason = e.reason if e.reason == TIMEOUT_REASON else f"{e.reason} {e.trace or ''}".strip()
        raise ConstitutionFailure(f"Failed to execute validation: {reason}") from None
    if not isinstance(validation.value, dict):
        raise ConstitutionFailure("Validation failed to return an object")
    if validation.value.get("valid") is not True:
        description = validation.value.get("description")
        raise ProposalFailedToValidate(
            f"Proposal failed to validate: {description if isinstance(description, str) else ''}".rstrip())
    record_request(tx, request)
    record_proposal_submission(tx, request.created_at, request.signature, pid)
    tx.put(PROPOSALS, pid, request.payload)
    info = ProposalInfo(request.member_id, ProposalState.OPEN)
    tx.put_json(PROPOSALS_INFO, pid, info.to_json())
    info, effects = _resolve(tx, pid, info, node or NodeServices())
    return Outcome(pid, info.to_api(pid), effects)


def _check_url(request: SignedRequest, proposal_id: str) -> None:
    if request.proposal_id != proposal_id:
        raise InvalidResourceName("Authenticated proposal id does not match URL")


def submit_ballot(tx: Tx, request: SignedRequest, proposal_id: str, member_id: str,
                  node: NodeServices | None = None) -> Outcome:
    """Record the member's ballot and resolve the proposal again."""
    _check_url(request, proposal_id)
    if request.member_id != member_id:
        raise InvalidResourceName("Authenticated member id does not match URL")
    info = _existing(tx, proposal_id)
    if info.state is not ProposalState.OPEN:
        raise ProposalNotOpen(f"Proposal {proposal_id} is currently in state {info.state.value} - only "
                              f"{ProposalState.OPEN.value} proposals can receive votes")
    try:
        payload = orjson.loads(request.payload)
        ballot_source = payload["ballot"]
        if not isinstance(ballot_source, str):
            raise TypeError("ballot must be a string")
    except (orjson.JSONDecodeError, KeyError, TypeError) as e:
        raise InvalidRequest('Signed request body is not a JSON object containing required string field "ballot"'
                             ) from e
    existing = info.ballots.get(member_id)
    if existing is not None:
        if existing == ballot_source:
            return Outcome(proposal_id, info.to_api(proposal_id))
        raise VoteAlreadyExists(f"Different ballot already submitted by {member_id} for {proposal_id}.")
    record_request(tx, request)
    info = ProposalInfo(info.proposer_id, info.state, {**info.ballots, member_id: ballot_source})
    tx.put_json(PROPOSALS_INFO, proposal_id, info.to_json())
    info, effects = _resolve(tx, proposal_id, info, node or NodeServices())
    return Outcome(proposal_id, info.to_api(proposal_id), effects)


def withdraw_proposal(tx: Tx, request: SignedRequest, proposal_id: str) -> Outcome | None:
    """Withdraw an Open proposal (proposer only). An unknown proposal gives None (CCF answers 204)."""
    _check_url(request, proposal_id)
    info = _info(tx, proposal_id)
    if info is None:
        return None
    if info.proposer_id != request.member_id:
        raise AuthorizationFailed(f"Proposal {proposal_id} can only be withdrawn by proposer {info.proposer_id}, "
                                  f"not caller {request.member_id}.")
    if info.state is ProposalState.WITHDRAWN:
        return Outcome(proposal_id, info.to_api(proposal_id))
    if info.state is not ProposalState.OPEN:
        raise ProposalNotOpen(f"Proposal {proposal_id} is currently in state {info.state.value} and cannot be "
                              "withdrawn.")
    info = ProposalInfo(info.proposer_id, ProposalState.WITHDRAWN, info.ballots)
    tx.put_json(PROPOSALS_INFO, proposal_id, info.to_json())
    _remove_other_completed(tx, proposal_id)
    record_request(tx, request)
    return Outcome(proposal_id, info.to_api(proposal_id))
