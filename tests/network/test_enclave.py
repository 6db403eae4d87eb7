"""The enclave in process: frontends, governance over HTTP shapes, effects, signatures and commit."""

from __future__ import annotations

import base64
import gc
import os
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from governance.recovery_shares import RECOVERY_SHARES, decrypt_share, unwrap_ledger_secret
from ledger.receipts import verify_json_receipt
from ledger.tables import HISTORICAL_SECRETS, SERVICE_INFO, SINGLETON_KEY
from network.enclave import startup
from network.enclave.endpoints import TXID_HEADER
from tests.network.node_harness import API, Node

pytestmark = pytest.mark.unit


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(str(tmp_path))


@pytest.fixture
def open_node(tmp_path: Path) -> Node:
    n = Node(str(tmp_path))
    n.open_service()
    return n


def _error(response: object) -> tuple[int, str]:
    status = response.status  # type: ignore[attr-defined]
    return status, orjson.loads(response.body)["error"]["code"]  # type: ignore[attr-defined]


def test_the_app_frontend_is_closed_until_the_service_opens(node: Node) -> None:
    assert _error(node.user_call("GET", "/app/log/private?id=1")) == (404, "FrontendNotOpen")
    assert node.call("GET", "/node/ready/app").status == 503
    assert node.call("GET", "/node/ready/gov").status == 204
    node.open_service()
    assert node.call("GET", "/node/ready/app").status == 204
    written = node.user_call("POST", "/app/log/private", {"id": 1, "msg": "hello"})
    assert written.status == 200 and dict(written.headers)[TXID_HEADER].startswith("2.")
    assert orjson.loads(node.user_call("GET", "/app/log/private?id=1").body) == {"msg": "hello"}
    info = orjson.loads(node.call("GET", f"/gov/service/info{API}").body)
    assert info["status"] == "Open" and info["certificate"] == node.ledger.service.pem
    # as CCF: the transaction id of the service info the opening replaced (here genesis's, 2.1)
    assert info["previousServiceCreationTransactionId"] == info["creationTransactionId"] == "2.1"


def test_unknown_frontends_are_404(node: Node) -> None:
    assert _error(node.call("GET", "/nothing/here")) == (404, "ResourceNotFound")
    assert _error(node.call("GET", "/")) == (404, "ResourceNotFound")


def test_gov_calls_need_a_known_api_version_but_common_endpoints_do_not(node: Node) -> None:
    assert _error(node.call("GET", "/gov/members/proposals")) == (400, "MissingApiVersionParameter")
    assert _error(node.call("GET", "/gov/members/proposals?api-version=2099-01-01")) == \
        (400, "UnsupportedApiVersionValue")
    assert node.call("GET", f"/gov/members/proposals{API}").status == 200
    assert node.call("GET", "/gov/commit").status == 200


def test_signed_gov_calls_need_cose_content_and_a_valid_signature(node: Node) -> None:
    body = node.signer.proposal([{"name": "trigger_ledger_chunk"}])
    wrong_type = node.call("POST", f"/gov/members/proposals:create{API}", body,
                           headers={"content-type": "application/json"})
    assert _error(wrong_type) == (415, "UnsupportedContentType")
    assert _error(node.gov("/members/proposals:create", b"\x01garbage")) == (401, "InvalidAuthenticationInfo")
    # member0 is not Active before its ack: proposals need an active member
    assert _error(node.gov("/members/proposals:create", body)) == (401, "InvalidAuthenticationInfo")


def test_opening_deals_recovery_shares_that_member0_can_use(open_node: Node) -> None:
    member_id = open_node.signer.member_id
    answer = open_node.call("GET", f"/gov/recovery/encrypted-shares/{member_id}{API}")
    assert answer.status == 200, answer.body
    share = decrypt_share(orjson.loads(answer.body)["encryptedShare"], open_node.encryption_key)
    record = open_node.ledger.read_tx().get_json(RECOVERY_SHARES, SINGLETON_KEY)
    assert unwrap_ledger_secret(record, [share]) == open_node.ledger.secrets.latest.raw
    # the opening also starts the chain of historical secrets (verify_ledger_secrets_chain reads it)
    assert open_node.ledger.read_tx().get_json(HISTORICAL_SECRETS, SINGLETON_KEY) == {
        "next_version": open_node.ledger.secrets.latest.start}


def test_a_rekey_waits_while_the_service_recovers_but_not_for_one_nodes_late_private_replay(open_node: Node) -> None:
    """A node that reads its predecessor's private ledger after the opening reached it (it got the secrets only
    from the opening) may rekey, say as a new primary after `remove_member`: the opening continued the secret chain.
    While the service itself recovers, a rekey is not carried out."""
    enclave = open_node.enclave
    enclave.recovery = cast(Any, object())  # following a recovery, its private replay not done
    assert enclave.rekey() is not None and len(open_node.ledger.secrets) == 2
    tx = open_node.ledger.begin()
    tx.put_json(SERVICE_INFO, SINGLETON_KEY, {**tx.get_json(SERVICE_INFO, SINGLETON_KEY), "status": "Recovering"})
    assert open_node.ledger.commit(tx) is not None
    assert enclave.rekey() is None and len(open_node.ledger.secrets) == 2


def test_a_rekey_switches_secrets_reseals_and_deals_shares_for_the_new_secret(open_node: Node) -> None:
    sealed_before = open_node.host.sealed
    proposal = open_node.pass_proposal([{"name": "trigger_ledger_rekey"}])
    assert proposal["proposalState"] == "Accepted"
    assert len(open_node.ledger.secrets) == 2 and open_node.host.sealed == sealed_before + 1
    answer = open_node.call("GET", f"/gov/recovery/encrypted-shares/{open_node.signer.member_id}{API}")
    share = decrypt_share(orjson.loads(answer.body)["encryptedShare"], open_node.encryption_key)
    record = open_node.ledger.read_tx().get_json(RECOVERY_SHARES, SINGLETON_KEY)
    assert unwrap_ledger_secret(record, [share]) == open_node.ledger.secrets.latest.raw
    assert open_node.user_call("POST", "/app/log/private", {"id": 2, "msg": "after rekey"}).status == 200
    assert orjson.loads(open_node.user_call("GET", "/app/log/private?id=2").body) == {"msg": "after rekey"}


def test_an_opening_that_cannot_deal_shares_fails_and_commits_nothing(node: Node) -> None:
    node.activate_member()
    raised = node.pass_proposal([{"name": "set_recovery_threshold", "args": {"recovery_threshold": 1}}])
    assert raised["proposalState"] == "Accepted"
    # with member0's encryption key gone there is no recovery member to deal shares to
    tx = node.ledger.begin()
    tx.remove("public:ccf.gov.members.encryption_public_keys", node.signer.member_id)
    node.ledger.commit(tx)
    last = node.ledger.last_seqno
    created = node.gov("/members/proposals:create", node.signer.proposal([
        {"name": "transition_service_to_open", "args": {"next_service_identity": node.ledger.service.pem}}]))
    assert created.status == 200  # Open: it waits for member0's ballot
    pid = orjson.loads(created.body)["proposalId"]
    last = node.ledger.last_seqno
    voted = node.gov(f"/members/proposals/{pid}/ballots/{node.signer.member_id}:submit", node.signer.ballot(pid))
    assert _error(voted) == (500, "InternalError")
    assert b"recovery member" in voted.body
    assert node.ledger.last_seqno == last  # the ballot, the acceptance and the opening: none committed
    assert node.ledger.read_tx().get_json(SERVICE_INFO, SINGLETON_KEY)["status"] == "Opening"
    assert orjson.loads(node.call("GET", f"/gov/members/proposals/{pid}{API}").body)["proposalState"] == "Open"


def test_a_signature_follows_every_n_transactions_and_commits(tmp_path: Path) -> None:
    node = Node(str(tmp_path), every_tx=3)
    node.open_service()
    node.enclave.sign()
    committed = node.ledger.committed_seqno
    for i in range(2):
        node.user_call("POST", "/app/log/public", {"id": i, "msg": "m"})
    assert node.ledger.committed_seqno == committed
    node.user_call("POST", "/app/log/public", {"id": 2, "msg": "m"})
    assert node.ledger.is_signature(node.ledger.last_seqno)
    assert node.ledger.committed_seqno == node.ledger.last_seqno


def test_the_tick_signs_once_unsigned_transactions_waited_every_ms(open_node: Node) -> None:
    open_node.enclave.sign()
    written = open_node.user_call("POST", "/app/log/private", {"id": 7, "msg": "x"})
    txid = dict(written.headers)[TXID_HEADER]
    status = lambda: orjson.loads(open_node.user_call("GET", f"/app/tx?transaction_id={txid}").body)["status"]  # noqa
    assert status() == "Pending"
    open_node.clock.now += 0.010
    open_node.enclave.tick()
    assert status() == "Pending"
    open_node.clock.now += 0.015
    open_node.enclave.tick()
    assert status() == "Committed"


def test_group_commit_signs_at_the_end_of_a_turn_when_no_signature_waits(open_node: Node) -> None:
    open_node.enclave.sign()
    written = open_node.user_call("POST", "/app/log/private", {"id": 8, "msg": "x"})
    txid = dict(written.headers)[TXID_HEADER]
    status = lambda: orjson.loads(open_node.user_call("GET", f"/app/tx?transaction_id={txid}").body)["status"]  # noqa
    assert status() == "Pending"  # the clock has not moved: every_ms would not sign yet
    open_node.enclave.turn_ended()
    assert status() == "Committed"
    assert open_node.enclave.turn_ended() is None and open_node.ledger.is_signature(open_node.ledger.last_seqno)


def test_group_commit_waits_while_a_signature_is_on_its_way_to_a_majority(open_node: Node,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = open_node.ledger
    commits: list[int] = []
    monkeypatch.setattr(ledger, "commit_to", commits.append)  # as if the backups had not acknowledged yet
    open_node.user_call("POST", "/app/log/private", {"id": 9, "msg": "x"})
    open_node.enclave.turn_ended()
    in_flight = ledger.last_signature_seqno
    assert ledger.is_signature(in_flight) and ledger.committed_seqno < in_flight
    for i in range(3):  # they gather while the signature replicates
        open_node.user_call("POST", "/app/log/private", {"id": 10 + i, "msg": "x"})
        open_node.enclave.turn_ended()
    assert ledger.last_signature_seqno == in_flight and ledger.last_seqno == in_flight + 3
    monkeypatch.undo()
    ledger.commit_to(in_flight)  # the majority's acknowledgement
    open_node.enclave.turn_ended()  # the turn that brought it signs what gathered: one signature for three
    assert ledger.last_signature_seqno == in_flight + 4 == ledger.committed_seqno


def test_while_a_signature_replicates_what_gathers_is_replicated_by_batches_before_it_is_signed(
        open_node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    from network.enclave.enclave import EAGER_REPLICATION_MIN

    ledger, raft = open_node.ledger, open_node.enclave.replicator.raft
    monkeypatch.setattr(ledger, "commit_to", lambda seqno: None)  # the backups have not acknowledged yet
    open_node.user_call("POST", "/app/log/private", {"id": 9, "msg": "x"})
    open_node.enclave.turn_ended()
    in_flight = ledger.last_signature_seqno
    for i in range(EAGER_REPLICATION_MIN - 1):
        open_node.user_call("POST", "/app/log/private", {"id": 10 + i, "msg": "x"})
        open_node.enclave.turn_ended()
    assert raft.last_index == in_flight  # too few to be worth a message: they wait
    open_node.user_call("POST", "/app/log/private", {"id": 99, "msg": "x"})
    open_node.enclave.turn_ended()
    assert raft.last_index == ledger.last_seqno == in_flight + EAGER_REPLICATION_MIN  # handed to consensus
    assert ledger.last_signature_seqno == in_flight  # and still not signed


def test_without_group_commit_what_gathers_is_replicated_by_batches_until_every_ms_signs(tmp_path: Path) -> None:
    from network.enclave.enclave import EAGER_REPLICATION_MIN

    node = Node(str(tmp_path), group_commit=False)
    node.open_service()
    node.enclave.sign()
    raft = node.enclave.replicator.raft
    for i in range(EAGER_REPLICATION_MIN):
        node.user_call("POST", "/app/log/private", {"id": i, "msg": "x"})
        node.enclave.turn_ended()
    assert raft.last_index == node.ledger.last_seqno and not node.ledger.is_signature(node.ledger.last_seqno)
    node.clock.now += 0.025
    node.enclave.tick()
    assert node.ledger.is_signature(node.ledger.last_seqno) == (raft.last_index == node.ledger.last_seqno)


def test_without_group_commit_only_every_tx_and_every_ms_sign(tmp_path: Path) -> None:
    node = Node(str(tmp_path), group_commit=False)
    node.open_service()
    node.enclave.sign()
    node.user_call("POST", "/app/log/private", {"id": 1, "msg": "x"})
    node.enclave.turn_ended()
    assert not node.ledger.is_signature(node.ledger.last_seqno)
    node.clock.now += 0.025
    node.enclave.tick()
    assert node.ledger.is_signature(node.ledger.last_seqno)


def test_a_read_names_the_last_transaction_it_observed(open_node: Node) -> None:
    written = open_node.user_call("POST", "/app/log/private", {"id": 3, "msg": "x"})
    read = open_node.user_call("GET", "/app/log/private?id=3")
    assert dict(read.headers)[TXID_HEADER] == dict(written.headers)[TXID_HEADER]


def test_receipts_are_served_for_committed_transactions_only(open_node: Node) -> None:
    written = open_node.user_call("POST", "/app/log/private", {"id": 4, "msg": "x"})
    txid = dict(written.headers)[TXID_HEADER]
    assert _error(open_node.user_call("GET", f"/app/receipt?transaction_id={txid}")) == \
        (404, "TransactionPendingOrUnknown")
    open_node.enclave.sign()
    answer = open_node.user_call("GET", f"/app/receipt?transaction_id={txid}")
    assert answer.status == 200
    verified = verify_json_receipt(orjson.loads(answer.body), open_node.ledger.service.cert)
    assert verified.seqno == int(txid.split(".")[1])
    assert _error(open_node.user_call("GET", "/app/receipt?transaction_id=nonsense")) == \
        (400, "InvalidQueryParameterValue")


def test_a_node_serves_receipts_of_transactions_older_than_the_records_it_keeps(open_node: Node) -> None:
    """Past `retained_records` committed transactions, a node drops their tree nodes and digests; their receipts
    come from the ledger files, and are the ones it served before."""
    written = open_node.user_call("POST", "/app/log/private", {"id": 5, "msg": "old"})
    txid = dict(written.headers)[TXID_HEADER]
    open_node.enclave.sign()
    before = open_node.user_call("GET", f"/app/receipt?transaction_id={txid}").body
    open_node.ledger.retained_records = 3
    for i in range(10):
        open_node.user_call("POST", "/app/log/private", {"id": 100 + i, "msg": "new"})
        open_node.enclave.sign()
    assert open_node.ledger.merkle.first_retained > int(txid.split(".")[1])
    answer = open_node.user_call("GET", f"/app/receipt?transaction_id={txid}")
    assert (answer.status, answer.body) == (200, before)
    assert verify_json_receipt(orjson.loads(answer.body), open_node.ledger.service.cert).seqno == \
        int(txid.split(".")[1])


def test_governance_reads_show_proposals_ballots_members_and_users(open_node: Node) -> None:
    n = open_node
    body = n.signer.proposal([{"name": "trigger_ledger_chunk"}])
    created = orjson.loads(n.gov("/members/proposals:create", body).body)
    pid = created["proposalId"]
    assert created["proposalState"] == "Open" and created["proposerId"] == n.signer.member_id
    assert orjson.loads(n.call("GET", f"/gov/members/proposals/{pid}/actions{API}").body) == \
        {"actions": [{"name": "trigger_ledger_chunk"}]}
    assert any(p["proposalId"] == pid for p in orjson.loads(n.call("GET", f"/gov/members/proposals{API}").body)
               ["value"])
    assert _error(n.call("GET", f"/gov/members/proposals/{pid}/ballots/{n.signer.member_id}{API}")) == \
        (404, "VoteNotFound")
    n.gov(f"/members/proposals/{pid}/ballots/{n.signer.member_id}:submit", n.signer.ballot(pid))
    ballot = n.call("GET", f"/gov/members/proposals/{pid}/ballots/{n.signer.member_id}{API}")
    assert ballot.status == 200 and ("content-type", "text/javascript") in ballot.headers
    assert b"return true" in ballot.body
    assert _error(n.call("GET", f"/gov/members/proposals/{'ab' * 32}{API}")) == (404, "ProposalNotFound")
    member = orjson.loads(n.call("GET", f"/gov/service/members/{n.signer.member_id}{API}").body)
    assert member["status"] == "Active" and member["recoveryRole"] == "Participant"
    users = orjson.loads(n.call("GET", f"/gov/service/users{API}").body)["value"]
    assert [u["userId"] for u in users] == [n.user.id]
    constitution = n.call("GET", f"/gov/service/constitution{API}")
    assert b"export function resolve" in constitution.body
    node_info = orjson.loads(n.call("GET", f"/gov/service/nodes/{n.enclave.node_id}{API}").body)
    assert node_info["status"] == "Trusted" and node_info["quoteInfo"]["format"] == "Insecure_Virtual"


def test_withdrawing_an_unknown_proposal_is_204_and_a_known_one_withdraws(open_node: Node) -> None:
    n = open_node
    unknown = "cd" * 32
    assert n.gov(f"/members/proposals/{unknown}:withdraw", n.signer.withdrawal(unknown)).status == 204
    pid = orjson.loads(n.gov("/members/proposals:create", n.signer.proposal(
        [{"name": "trigger_ledger_chunk"}])).body)["proposalId"]
    withdrawn = n.gov(f"/members/proposals/{pid}:withdraw", n.signer.withdrawal(pid))
    assert orjson.loads(withdrawn.body)["proposalState"] == "Withdrawn"


def test_the_node_frontend_describes_the_node(open_node: Node) -> None:
    n = open_node
    network = orjson.loads(n.call("GET", "/node/network").body)
    assert network["service_status"] == "Open" and network["primary_id"] == n.enclave.node_id
    state = orjson.loads(n.call("GET", "/node/state").body)
    assert state["state"] == "PartOfNetwork" and state["node_id"] == n.enclave.node_id
    quote = orjson.loads(n.call("GET", "/node/quotes/self").body)
    raw = orjson.loads(base64.b64decode(quote["raw"]))
    assert quote["format"] == "Insecure_Virtual" and raw["report_data"] == n.enclave.node_id
    assert [q["node_id"] for q in orjson.loads(n.call("GET", "/node/quotes").body)["quotes"]] == [n.enclave.node_id]
    nodes = orjson.loads(n.call("GET", "/node/network/nodes").body)["nodes"]
    assert len(nodes) == 1 and nodes[0]["primary"] is True
    assert orjson.loads(n.call("GET", "/node/network/nodes?status=Pending").body)["nodes"] == []
    assert _error(n.call("GET", f"/node/network/nodes/{'ef' * 32}")) == (404, "ResourceNotFound")
    assert n.call("GET", "/node/primary").status == 200
    assert n.call("GET", "/node/backup").status == 404
    assert _error(n.call("GET", "/node/service/previous_identity")) == (404, "ResourceNotFound")
    assert orjson.loads(n.call("GET", "/node/service/configuration").body)["recovery_threshold"] == 1
    paths = orjson.loads(n.call("GET", "/node/api").body)["paths"]
    assert "/node/network" in paths and "/node/receipt" in paths
    app_paths = orjson.loads(n.user_call("GET", "/app/api").body)["paths"]
    assert "/app/log/private" in app_paths and "/app/commit" in app_paths
    cert = orjson.loads(n.call("GET", "/node/self_signed_certificate").body)["self_signed_certificate"]
    assert cert.startswith("-----BEGIN CERTIFICATE-----")


def test_commit_is_decided_by_consensus_whose_core_keeps_only_the_uncommitted_suffix(open_node: Node) -> None:
    raft = open_node.enclave.replicator.raft
    assert raft.role.value == "Primary" and open_node.enclave.primary_id() == open_node.enclave.node_id
    assert open_node.host.hard_state is not None and open_node.host.hard_state.term == open_node.ledger.view
    open_node.user_call("POST", "/app/log/private", {"id": 9, "msg": "x"})
    assert raft.last_index < open_node.ledger.last_seqno  # proposed to consensus at the next signature
    sig = open_node.enclave.sign()
    assert sig is not None
    assert raft.commit == open_node.ledger.committed_seqno == sig.seqno == raft.last_index
    assert raft.first_index == sig.seqno + 1 and not raft.log  # compacted: the ledger keeps the rest
    assert raft.term_at(sig.seqno - 1) == open_node.ledger.view_of(sig.seqno - 1)  # read back from the ledger


def test_too_many_uncommitted_transactions_get_503_except_on_the_node_frontend(tmp_path: Path) -> None:
    from network.boundary import EnclaveSettings, SignaturePolicy

    node = Node(str(tmp_path))
    node.open_service()
    node.enclave.settings = EnclaveSettings(SignaturePolicy(10**6, 10**6), 0, max_uncommitted_tx=3)
    node.enclave.sign()
    for i in range(3):
        assert node.user_call("POST", "/app/log/private", {"id": i, "msg": "x"}).status == 200
    assert _error(node.user_call("POST", "/app/log/private", {"id": 9, "msg": "x"})) == \
        (503, "TooManyPendingTransactions")
    assert node.call("GET", "/node/commit").status == 200
    node.enclave.sign()
    assert node.user_call("POST", "/app/log/private", {"id": 9, "msg": "x"}).status == 200


@pytest.mark.parametrize("text, year", [("261128210857Z", 2026), ("20261128210857Z", 2026),
                                        ("2026-11-28T21:08:57Z", 2026)])
def test_valid_from_times_are_read_by_their_length(text: str, year: int) -> None:
    from network.enclave.enclave import _parse_valid_from

    parsed = _parse_valid_from(text)
    assert (parsed.year, parsed.month, parsed.day, parsed.hour, parsed.second) == (year, 11, 28, 21, 57)


def test_a_replicated_entry_the_node_cannot_take_stops_the_node_once(node: Node) -> None:
    """Consensus has taken the message but the ledger cannot follow (here: bytes that are no entry): going on
    would serve a state that is not the service's, so the enclave asks the host to stop the node (it exits
    non-zero; restarted, it replays its ledger and rejoins), once, and ignores what arrives meanwhile."""
    from network.consensus.raft import AppendEntries, EntryMeta
    from network.enclave.wire import Envelope

    ledger = node.ledger
    last, view = ledger.last_seqno, ledger.view
    me = node.keys.identity.node_id

    def bad_entry(term: int) -> Envelope:
        return Envelope(AppendEntries(term, "another-node", me, last, view, (EntryMeta(last + 1, term, False),),
                                      ledger.committed_seqno), (b"not an entry",))

    node.enclave.receive(bad_entry(view + 1))
    assert len(node.host.failures) == 1 and "does not verify" in node.host.failures[0]
    node.enclave.receive(bad_entry(view + 2))
    assert len(node.host.failures) == 1
    assert ledger.last_seqno == last  # nothing taken


@pytest.mark.parametrize("fault", ["ENOSPC", "EROFS"])
def test_a_disk_that_refuses_writes_stops_the_primary_and_nothing_unwritten_commits(
        open_node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    """A full or read-only disk (the chaos runs' failpoint): the primary's next flush fails, and it stops rather
    than go on accepting writes it cannot keep; what it could not write never commits."""
    import ledger.files

    monkeypatch.setattr(ledger.files, "_FAILPOINTS", True)
    node = open_node
    committed = node.ledger.committed_seqno
    (tmp_path / "ledger" / ledger.files.DISK_FAULT_FILE).write_text(fault)
    answer = node.user_call("POST", "/app/log/private", {"id": 1, "msg": "never durable"})
    node.enclave.turn_ended()  # group commit: sign and flush now
    node.clock.now += 1
    node.enclave.tick()
    assert len(node.host.failures) == 1 and "the ledger cannot be written" in node.host.failures[0]
    assert {"ENOSPC": "No space left", "EROFS": "Read-only file system"}[fault] in node.host.failures[0]
    assert node.ledger.committed_seqno == committed  # accepted (or refused with a 500), never committed
    assert answer.status in (200, 500)
    node.enclave.tick()
    node.enclave.turn_ended()
    assert len(node.host.failures) == 1  # once


def test_the_disk_failpoint_is_off_unless_the_environment_turns_it_on(tmp_path: Path) -> None:
    import ledger.files

    assert ledger.files._FAILPOINTS is (os.environ.get("PYCCF_FAILPOINTS", "") not in ("", "0"))
    if not ledger.files._FAILPOINTS:
        node = Node(str(tmp_path))
        (tmp_path / "ledger" / ledger.files.DISK_FAULT_FILE).write_text("ENOSPC")
        node.open_service()  # writes and flushes as usual
        assert node.host.failures == []


def test_a_serving_node_collects_its_youngest_objects_rarely_enough_for_requests_in_flight_to_die_young() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)  # CPython's default
        startup.tune_collector()
        assert gc.get_threshold()[0] == startup.YOUNG_COLLECTION_EVERY >= 50 * 700
    finally:
        gc.set_threshold(*before)


def test_automatic_snapshots_come_every_n_transactions_and_rest_three_times_as_long_as_the_last_took(
        tmp_path: Path) -> None:
    node = Node(str(tmp_path), every_tx=1, snapshot_every_tx=4)
    node.open_service()
    started: list[tuple[int, Any]] = []  # (seqno of the state, finish) of each snapshot the enclave started
    node.host.run_snapshot = lambda serialise, done: started.append(  # type: ignore[method-assign]
        (node.ledger.last_signature_seqno, lambda: done("00" * 32, lambda path: None)))

    def write_until_a_snapshot_starts(limit: int) -> int:
        before = len(started)
        for i in range(limit):
            node.user_call("POST", "/app/log/public", {"id": i, "msg": "m"})  # every_tx=1: one signature each
            if len(started) > before:
                return i + 1
        return 0

    assert write_until_a_snapshot_starts(40) > 0  # the first: every_tx transactions after the opening's
    node.clock.now += 2.0  # it takes 2 s
    started[-1][1]()
    # the next one is due by count, but waits 3 x 2 s after the last one finished
    assert write_until_a_snapshot_starts(20) == 0
    node.clock.now += 5.9
    assert write_until_a_snapshot_starts(20) == 0
    node.clock.now += 0.1
    assert write_until_a_snapshot_starts(1) == 1
    # a quick one leaves the count alone to decide
    started[-1][1]()
    assert 0 < write_until_a_snapshot_starts(40) <= 8  # 4 transactions, each with its signature
    assert [seqno for seqno, _ in started] == sorted({seqno for seqno, _ in started})
