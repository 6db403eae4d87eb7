"""The default constitution: every action accepted with good arguments and refused with a precise message on
bad ones; the majority, veto and sandbox resolves."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from governance.constitution import default_constitution
from governance.errors import ConstitutionFailure, ProposalFailedToValidate
from governance.proposals import NodeServices
from governance.tables import PROPOSALS_INFO
from ledger.identity import PartyIdentity, ServiceIdentity
from ledger.kv import Tx
from ledger.tables import (
    MEMBERS_ACKS,
    MEMBERS_CERTS,
    MEMBERS_ENCRYPTION_KEYS,
    MEMBERS_INFO,
    NODES_ENDORSED_CERTS,
    NODES_INFO,
    SERVICE_CONFIG,
    SERVICE_INFO,
    SIGNATURES,
    SINGLETON_KEY,
    USERS_CERTS,
    USERS_INFO,
    VIRTUAL_HOST_DATA,
    VIRTUAL_MEASUREMENTS,
)
from tests.governance.harness import REJECT, Gov

pytestmark = pytest.mark.unit

SERVICE = ServiceIdentity.create()
NODE_ID = "ab" * 32
PENDING_NODE_ID = "cd" * 32
RSA_PEM = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
NODE = NodeServices(
    values={"latest_ledger_secret_seqno": 7},
    calls={"generateEndorsedCertificate": lambda csr, valid_from, days: f"ENDORSED {csr} {valid_from} {days}",
           "generateNetworkCertificate": lambda valid_from, days: f"SERVICE {valid_from} {days}"},
)


def sandbox(status: str = "Opening", resolve: str = "sandbox") -> Gov:
    gov = Gov(default_constitution(resolve), node=NODE)
    tx = gov.store.begin()
    tx.put_json(SERVICE_INFO, SINGLETON_KEY, {"cert": SERVICE.pem, "status": status})
    tx.put_json(SERVICE_CONFIG, SINGLETON_KEY, {"recovery_threshold": 1, "maximum_node_certificate_validity_days": 90,
                                                "maximum_service_certificate_validity_days": 365})
    tx.put_json(SIGNATURES, SINGLETON_KEY, {"root": "11" * 32})
    tx.put_json(NODES_INFO, NODE_ID, {"status": "Trusted", "certificate_signing_request": "CSR-A"})
    tx.put_json(NODES_INFO, PENDING_NODE_ID, {"status": "Pending", "certificate_signing_request": "CSR-B"})
    gov.store.commit(tx)
    return gov


def act(gov: Gov, name: str, args: dict[str, Any] | None = None, *more: tuple[str, dict[str, Any] | None]) -> Any:
    """Propose actions as member0; an action given None takes no arguments (its "args" is left out)."""
    actions = [{"name": n, **({"args": a} if a is not None else {})} for n, a in ((name, args), *more)]
    return gov.propose(gov.members[0], {"actions": actions})


def state(gov: Gov) -> Tx:
    return gov.store.read_tx()


def test_set_member_then_remove_member() -> None:
    gov = sandbox()
    newcomer = PartyIdentity.create("newcomer")
    act(gov, "set_member", {"cert": newcomer.pem, "encryption_pub_key": RSA_PEM, "member_data": {"role": "x"}})
    tx = state(gov)
    assert tx.get(MEMBERS_CERTS, newcomer.id) == newcomer.pem.encode()
    assert tx.get_json(MEMBERS_INFO, newcomer.id) == {"member_data": {"role": "x"}, "recovery_role": "Participant",
                                                      "status": "Accepted"}
    assert tx.get_json(MEMBERS_ACKS, newcomer.id) == {"state_digest": "11" * 32}
    assert tx.get(MEMBERS_ENCRYPTION_KEYS, newcomer.id) == RSA_PEM.encode()
    act(gov, "set_member_data", {"member_id": newcomer.id, "member_data": "updated"})
    assert state(gov).get_json(MEMBERS_INFO, newcomer.id)["member_data"] == "updated"
    act(gov, "remove_member", {"member_id": newcomer.id})
    assert state(gov).get(MEMBERS_CERTS, newcomer.id) is None
    act(gov, "remove_member", {"member_id": newcomer.id})  # idempotent


def test_removing_an_active_recovery_member_below_the_threshold_is_refused_and_otherwise_rekeys() -> None:
    gov = sandbox(status="Open")
    tx = gov.store.begin()
    recovery = gov.members[1]
    tx.put(MEMBERS_ENCRYPTION_KEYS, recovery.id, RSA_PEM.encode())
    gov.store.commit(tx)
    with pytest.raises(ConstitutionFailure, match="would be less than recovery threshold"):
        act(gov, "remove_member", {"member_id": recovery.id})
    act(gov, "set_recovery_threshold", {"recovery_threshold": 1})
    tx = gov.store.begin()
    tx.put(MEMBERS_ENCRYPTION_KEYS, gov.members[2].id, RSA_PEM.encode())
    gov.store.commit(tx)
    outcome = act(gov, "remove_member", {"member_id": recovery.id})
    assert [e.name for e in outcome.effects] == ["trigger_ledger_rekey"]


def test_recovery_owners_follow_ccfs_rules_for_removal_and_the_threshold() -> None:
    gov = sandbox(status="Open")
    owner, participant = gov.members[1], gov.members[2]
    tx = gov.store.begin()
    for member in (owner, participant):
        tx.put(MEMBERS_ENCRYPTION_KEYS, member.id, RSA_PEM.encode())
    tx.put_json(MEMBERS_INFO, owner.id, {**tx.get_json(MEMBERS_INFO, owner.id), "recovery_role": "Owner"})
    gov.store.commit(tx)
    # not below the threshold while it is above 1, owner or not
    act(gov, "set_recovery_threshold", {"recovery_threshold": 1})
    tx = gov.store.begin()
    tx.put_json(SERVICE_CONFIG, SINGLETON_KEY, {**tx.get_json(SERVICE_CONFIG, SINGLETON_KEY), "recovery_threshold": 2})
    gov.store.commit(tx)
    with pytest.raises(ConstitutionFailure, match="would be less than recovery threshold"):
        act(gov, "remove_member", {"member_id": participant.id})
    act(gov, "set_recovery_threshold", {"recovery_threshold": 1})
    # the last participant may go while an owner recovers alone at a threshold of 1 (and the ledger is rekeyed)
    outcome = act(gov, "remove_member", {"member_id": participant.id})
    assert [e.name for e in outcome.effects] == ["trigger_ledger_rekey"]
    # with owners only, the threshold stays 1
    with pytest.raises(ConstitutionFailure, match="that are of type recovery owner exist"):
        act(gov, "set_recovery_threshold", {"recovery_threshold": 2})
    # and the last owner cannot go: nobody would hold the key
    with pytest.raises(ConstitutionFailure, match="last active recovery owner"):
        act(gov, "remove_member", {"member_id": owner.id})
    assert state(gov).get(MEMBERS_CERTS, owner.id) is not None


def test_an_owner_may_go_while_participants_remain_and_a_non_participant_with_a_key_always() -> None:
    gov = sandbox(status="Open")
    owner, participant, bystander = gov.members[1], gov.members[2], gov.members[0]
    tx = gov.store.begin()
    for member, role in ((owner, "Owner"), (participant, "Participant"), (bystander, "NonParticipant")):
        tx.put(MEMBERS_ENCRYPTION_KEYS, member.id, RSA_PEM.encode())  # (older ledgers let a NonParticipant hold one)
        tx.put_json(MEMBERS_INFO, member.id, {**tx.get_json(MEMBERS_INFO, member.id), "recovery_role": role})
    gov.store.commit(tx)
    act(gov, "remove_member", {"member_id": owner.id})
    assert state(gov).get(MEMBERS_CERTS, owner.id) is None
    act(gov, "remove_member", {"member_id": bystander.id})  # (member0, who proposes: last)
    assert state(gov).get(MEMBERS_CERTS, bystander.id) is None


def test_users() -> None:
    gov = sandbox()
    user = PartyIdentity.create("user")
    act(gov, "set_user", {"cert": user.pem, "user_data": {"tier": 1}})
    assert state(gov).get_json(USERS_INFO, user.id) == {"user_data": {"tier": 1}}
    act(gov, "set_user_data", {"user_id": user.id, "user_data": None})
    assert state(gov).get(USERS_INFO, user.id) is None
    act(gov, "remove_user", {"user_id": user.id})
    assert state(gov).get(USERS_CERTS, user.id) is None
    with pytest.raises(ConstitutionFailure, match="does not exist"):
        act(gov, "set_user_data", {"user_id": user.id, "user_data": 1})


def test_node_lifecycle_actions() -> None:
    gov = sandbox()
    act(gov, "transition_node_to_trusted", {"node_id": PENDING_NODE_ID, "valid_from": "260101000000Z"})
    tx = state(gov)
    assert tx.get_json(NODES_INFO, PENDING_NODE_ID)["status"] == "Trusted"
    assert tx.get_json(NODES_INFO, PENDING_NODE_ID)["ledger_secret_seqno"] == 7
    assert tx.get(NODES_ENDORSED_CERTS, PENDING_NODE_ID) == b"ENDORSED CSR-B 260101000000Z 90"
    act(gov, "set_node_certificate_validity", {"node_id": NODE_ID, "valid_from": "260201000000Z",
                                               "validity_period_days": 30})
    assert state(gov).get(NODES_ENDORSED_CERTS, NODE_ID) == b"ENDORSED CSR-A 260201000000Z 30"
    act(gov, "set_all_nodes_certificate_validity", {"valid_from": "260301000000Z"})
    assert state(gov).get(NODES_ENDORSED_CERTS, PENDING_NODE_ID) == b"ENDORSED CSR-B 260301000000Z 90"
    act(gov, "set_node_data", {"node_id": NODE_ID, "node_data": {"zone": 1}})
    assert state(gov).get_json(NODES_INFO, NODE_ID)["node_data"] == {"zone": 1}
    act(gov, "remove_node", {"node_id": NODE_ID})
    assert state(gov).get_json(NODES_INFO, NODE_ID)["status"] == "Retired"
    with pytest.raises(ConstitutionFailure, match="must be lower than 90"):
        act(gov, "set_node_certificate_validity", {"node_id": PENDING_NODE_ID, "valid_from": "260101000000Z",
                                                   "validity_period_days": 91})


def test_service_actions_and_effects() -> None:
    gov = sandbox()
    opened = act(gov, "transition_service_to_open", {"next_service_identity": SERVICE.pem})
    assert [e.name for e in opened.effects] == ["transition_service_to_open"]
    with pytest.raises(ConstitutionFailure, match="does not match the current service identity"):
        act(gov, "transition_service_to_open", {"next_service_identity": ServiceIdentity.create().pem})
    effects = act(gov, "trigger_ledger_rekey", None, ("trigger_ledger_chunk", None), ("trigger_snapshot", None),
                  ("trigger_recovery_shares_refresh", None)).effects
    assert [e.name for e in effects] == ["trigger_ledger_rekey", "trigger_ledger_chunk", "trigger_snapshot",
                                         "trigger_recovery_shares_refresh"]
    act(gov, "set_service_configuration", {"recent_cose_proposals_window_size": 50})
    assert state(gov).get_json(SERVICE_CONFIG, SINGLETON_KEY)["recent_cose_proposals_window_size"] == 50
    act(gov, "set_service_certificate_validity", {"valid_from": "260101000000Z", "validity_period_days": 10})
    assert state(gov).get_json(SERVICE_INFO, SINGLETON_KEY)["cert"] == "SERVICE 260101000000Z 10"
    act(gov, "set_js_runtime_options", {"max_heap_bytes": 200_000_000, "max_stack_bytes": 2_000_000,
                                        "max_execution_time_ms": 6000})
    assert state(gov).get_json("public:ccf.gov.js_runtime_options", SINGLETON_KEY)["max_execution_time_ms"] == 6000


def test_join_policy_actions_drop_other_open_proposals() -> None:
    gov = sandbox(resolve="majority")
    a, b, _ = gov.members
    pending = gov.propose(a, {"actions": [{"name": "trigger_snapshot"}]})
    policy = gov.propose(a, {"actions": [{"name": "add_virtual_measurement", "args": {"measurement": "m1"}},
                                         {"name": "add_virtual_host_data", "args": {"host_data": "h1"}}]})
    gov.vote(a, policy.proposal_id)
    gov.vote(b, policy.proposal_id)
    tx = state(gov)
    assert tx.get_json(VIRTUAL_MEASUREMENTS, "m1") == "AllowedToJoin"
    assert tx.get_json(VIRTUAL_HOST_DATA, "h1") == ""
    assert tx.get_json(PROPOSALS_INFO, pending.proposal_id)["state"] == "Dropped"
    gov2 = sandbox()
    act(gov2, "add_virtual_measurement", {"measurement": "m1"})
    act(gov2, "remove_virtual_measurement", {"measurement": "m1"}, ("remove_virtual_host_data", {"host_data": "h"}))
    assert state(gov2).get(VIRTUAL_MEASUREMENTS, "m1") is None


def test_jwt_and_ca_bundle_actions() -> None:
    gov = sandbox()
    jwks = {"keys": [{"kid": "k1", "kty": "EC", "crv": "P-256", "x": "xx", "y": "yy"}]}
    act(gov, "set_ca_cert_bundle", {"name": "bundle", "cert_bundle": SERVICE.pem})
    act(gov, "set_jwt_issuer", {"issuer": "https://issuer", "auto_refresh": True, "ca_cert_bundle_name": "bundle",
                                "jwks": jwks})
    tx = state(gov)
    assert tx.get_json("public:ccf.gov.jwt.issuers", "https://issuer") == {"auto_refresh": True,
                                                                         "ca_cert_bundle_name": "bundle"}
    assert tx.get_json("public:ccf.gov.jwt.public_signing_keys_metadata_v2", "k1") == [
        {"issuer": "https://issuer", "jwk": jwks["keys"][0]}]
    with pytest.raises(ConstitutionFailure, match="still used by JWT issuer"):
        act(gov, "remove_ca_cert_bundle", {"name": "bundle"})
    act(gov, "remove_jwt_issuer", {"issuer": "https://issuer"}, ("remove_ca_cert_bundle", {"name": "bundle"}))
    assert state(gov).get("public:ccf.gov.jwt.public_signing_keys_metadata_v2", "k1") is None


def test_set_constitution_replaces_it_and_drops_open_proposals() -> None:
    gov = sandbox(resolve="majority")
    a, b, _ = gov.members
    other = gov.propose(a, {"actions": [{"name": "trigger_snapshot"}]})
    change = gov.propose(a, {"actions": [{"name": "set_constitution",
                                          "args": {"constitution": default_constitution("sandbox")}}]})
    gov.vote(a, change.proposal_id)
    gov.vote(b, change.proposal_id)
    assert state(gov).get_json(PROPOSALS_INFO, other.proposal_id)["state"] == "Dropped"
    assert gov.propose(a, {"actions": [{"name": "trigger_snapshot"}]}).proposal["proposalState"] == \
        "Accepted"


@pytest.mark.parametrize(("name", "args", "message"), [
    ("set_member", {"cert": "not a cert"}, "cert must be a valid X509 certificate"),
    ("set_member", {"cert": SERVICE.pem, "recovery_role": "Boss"}, "recovery_role must be one of"),
    ("set_member", {"cert": SERVICE.pem, "recovery_role": "Participant"}, "needs an encryption_pub_key"),
    ("set_member", {"cert": SERVICE.pem, "recovery_role": "NonParticipant", "encryption_pub_key": RSA_PEM},
     "recovery role Participant or Owner"),
    ("remove_member", {"member_id": "xyz"}, "member_id must contain exactly 64 characters"),
    ("set_user", {"cert": 12}, "cert must be of type string but is of type number"),
    ("remove_user", {}, "user_id must be of type string"),
    ("set_recovery_threshold", {"recovery_threshold": 0}, "recovery_threshold must be greater than 1"),
    ("set_recovery_threshold", {"recovery_threshold": 255}, "recovery_threshold must be lower than 254"),
    ("set_recovery_threshold", {"recovery_threshold": 1.5}, "recovery_threshold must be an integer"),
    ("transition_service_to_open", {}, "next_service_identity must be of type string"),
    ("transition_node_to_trusted", {"node_id": NODE_ID, "valid_from": "yesterday"}, "valid_from must be an ASN.1"),
    ("set_service_configuration", {"consensus": "BFT"}, "Cannot change consensus via set_service_configuration"),
    ("set_service_configuration", {"recent_cose_proposals_window_size": 0},
     "recent_cose_proposals_window_size must be greater than 1"),
    ("set_service_configuration", {"reconfiguration_type": "Sometimes"}, "reconfiguration_type must be one of"),
    ("set_js_runtime_options", {"max_heap_bytes": 1, "max_stack_bytes": 1}, "max_execution_time_ms must be an integer"),
    ("set_ca_cert_bundle", {"name": "b", "cert_bundle": "junk"}, "cert_bundle must be a valid X509 certificate"),
    ("set_jwt_issuer", {"issuer": "http://plain", "auto_refresh": True}, "must be a URL starting with https://"),
    ("set_jwt_issuer", {"issuer": "https://x", "auto_refresh": True}, "ca_cert_bundle_name is missing"),
    ("set_jwt_public_signing_keys", {"issuer": "i", "jwks": {"keys": [{"kid": "k", "kty": "OKP"}]}},
     "must be an RSA or EC key, or carry x5c"),
    ("add_virtual_measurement", {}, "measurement must be of type string"),
    ("add_virtual_host_data", {"host_data": "h", "metadata": 3}, "metadata must be of type string"),
    ("assert_service_identity", {"service_identity": ServiceIdentity.create().pem}, "service identity assertion"),
    ("set_node_data", {"node_id": "short"}, "node_id must contain exactly 64"),
    ("no_such_thing", {}, "no_such_thing: no such action"),
    ("set_constitution", {"constitution": 5}, "constitution must be of type string"),
    ("set_member_data", {"member_id": "nope"}, "member_id must contain exactly 64"),
    ("set_user_data", {"user_id": 1}, "user_id must be of type string"),
    ("remove_node", {"node_id": ""}, "node_id must contain exactly 64"),
    ("set_node_certificate_validity", {"node_id": NODE_ID, "valid_from": "260101000000Z",
                                       "validity_period_days": "ten"}, "validity_period_days must be an integer"),
    ("set_all_nodes_certificate_validity", {"valid_from": 5}, "valid_from must be of type string"),
    ("set_service_certificate_validity", {"valid_from": "2026-01-01"}, "valid_from must be an ASN.1 UTCTime"),
    ("remove_ca_cert_bundle", {"name": None}, "name must be of type string"),
    ("remove_jwt_issuer", {}, "issuer must be of type string"),
    ("set_jwt_public_signing_keys", {"issuer": "i", "jwks": {"keys": "none"}}, "jwks.keys must be an array"),
    ("remove_virtual_measurement", {"measurement": []}, "measurement must be of type string"),
    ("remove_virtual_host_data", {}, "host_data must be of type string"),
    ("set_member", {"cert": SERVICE.pem, "encryption_pub_key": "not a key"},
     "encryption_pub_key must be an RSA public key in PEM format"),
])
def test_bad_arguments_are_refused_with_a_precise_message(name: str, args: dict[str, Any], message: str) -> None:
    gov = sandbox()
    with pytest.raises(ProposalFailedToValidate) as info:
        act(gov, name, args)
    assert message in info.value.message


def test_validate_refuses_proposals_that_are_not_action_lists() -> None:
    gov = sandbox()
    for body in (b"not json", b"{}", b'{"actions": 3}'):
        with pytest.raises(ProposalFailedToValidate):
            gov.propose(gov.members[0], body)


def test_assert_service_identity_accepts_the_current_one() -> None:
    gov = sandbox()
    assert act(gov, "assert_service_identity", {"service_identity": SERVICE.pem}).proposal["proposalState"] == \
        "Accepted"


def test_majority_veto_and_sandbox_resolves() -> None:
    majority = sandbox(resolve="majority")
    a, b, c = majority.members
    p = majority.propose(a, {"actions": []})
    majority.vote(a, p.proposal_id, REJECT)
    majority.vote(b, p.proposal_id, REJECT)
    assert majority.vote(c, p.proposal_id, REJECT).proposal["proposalState"] == "Open"  # never Rejected
    veto = sandbox(resolve="veto")
    p = veto.propose(a, {"actions": []})
    veto.vote(a, p.proposal_id)
    assert veto.vote(b, p.proposal_id, REJECT).proposal["proposalState"] == "Rejected"
    assert sandbox().propose(a, {"actions": []}).proposal["proposalState"] == "Accepted"
    with pytest.raises(ValueError):
        default_constitution("dictator")


def test_the_default_constitution_is_what_it_says() -> None:
    source = default_constitution()
    assert "export function validate" in source and "export function resolve" in source
    assert "export function apply" in source and orjson.dumps(source)


def test_re_proposing_a_member_without_a_key_makes_it_no_longer_a_recovery_member() -> None:
    gov = sandbox()
    newcomer = PartyIdentity.create("newcomer")
    act(gov, "set_member", {"cert": newcomer.pem, "encryption_pub_key": RSA_PEM})
    act(gov, "set_member", {"cert": newcomer.pem, "encryption_pub_key": None})
    tx = state(gov)
    assert tx.get(MEMBERS_ENCRYPTION_KEYS, newcomer.id) is None
    assert "recovery_role" not in tx.get_json(MEMBERS_INFO, newcomer.id)


def test_threshold_changes_are_checked_the_same_way_by_both_actions() -> None:
    gov = sandbox(status="Open")
    for name, args in (("set_recovery_threshold", {"recovery_threshold": 2}),
                       ("set_service_configuration", {"recovery_threshold": 2})):
        with pytest.raises(ConstitutionFailure, match="only 0 active recovery members"):
            act(gov, name, args)


def test_the_last_recovery_members_cannot_go_below_the_threshold_even_before_opening() -> None:
    gov = sandbox(status="Opening")
    tx = gov.store.begin()
    tx.put(MEMBERS_ENCRYPTION_KEYS, gov.members[1].id, RSA_PEM.encode())
    gov.store.commit(tx)
    with pytest.raises(ConstitutionFailure, match="would be less than recovery threshold"):
        act(gov, "remove_member", {"member_id": gov.members[1].id})


def test_actions_without_arguments_refuse_any_as_ccf_does() -> None:
    """CCF's checkNone: the rekey and the shares refresh take no "args", not even {}; the chunk and snapshot
    triggers ignore what they are given, as in CCF's default constitution."""
    gov = sandbox()
    for name in ("trigger_ledger_rekey", "trigger_recovery_shares_refresh"):
        with pytest.raises(ProposalFailedToValidate, match=f"{name} at position 0 failed validation: Proposal does "
                                                           'not accept any argument, found "\\[object Object\\]"'):
            gov.propose(gov.members[0], {"actions": [{"name": name, "args": {}}]})
        assert [e.name for e in act(gov, name).effects] == [name]
    for name in ("trigger_ledger_chunk", "trigger_snapshot"):
        assert [e.name for e in act(gov, name, {}).effects] == [name]
        assert [e.name for e in act(gov, name).effects] == [name]
