#!/usr/bin/env python3
"""Act as a consortium member: `member.py --cert C --key K [--url URL --service-cert PEM] COMMAND ...`.

With `--url`, each command is signed and sent to the node's `/gov` API (api-version 2024-07-01) and the
result printed (a line a person can read, or the JSON answer with `--json`). Without it, the signed
COSE_Sign1 body goes to --out (or stdout), ready to POST with `Content-Type: application/cose`.
  propose  (--actions FILE | --set-user CERT | --remove-user ID | --set-member CERT [--encryption-key PEM]
            | --trust-node NODE_ID
            | --transition-service-to-open SERVICE_CERT [--previous-service-cert OLD_SERVICE_CERT]
            | --set-constitution JS_FILE [JS_FILE ...] | --set-js-app BUNDLE_DIR | --trigger ACTION)
            (a recovered service is opened with both: its new certificate and the one it recovers)
  vote PROPOSAL_ID (--approve | --reject | --ballot JS_FILE)
  withdraw PROPOSAL_ID
  state-digest                 (the digest to ack)
  ack [--state-digest JSON_FILE] (with --url and no file: fetch the digest and ack it, i.e. activate)
  show PROPOSAL_ID, list       (--url only)
  recovery-share --enc-key PEM (--url only: fetch this member's encrypted recovery share, decrypt it with the
                               member's RSA encryption private key and submit it; prints `k/N shares submitted`,
                               or `full recovery key submitted` for a recovery owner)
A proposal id may be shortened to a unique prefix. `-q` prints only the proposal id (propose) or state, for
scripts: `P=$(pyccf-member ... propose --trigger trigger_ledger_rekey -q)`.
Errors print one line (`error: ...`, with CCF's code when the node refused) and exit 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from typing import Any

import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.js_bundle import BundleInvalid, read_bundle
from governance.member_client import (
    REJECT_BALLOT,
    MemberSigner,
    action,
    set_member,
    set_user,
    transition_node_to_trusted,
    transition_service_to_open,
)
from ledger.identity import load_cert
from network.client.connection import ServiceError
from network.client.member_api import MemberApi
from network.client.service import Client, ClientError


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _one_line(error: BaseException) -> str:
    """An error's text on one line, as every refusal of this script is printed."""
    return " ".join(str(error).split()) or type(error).__name__


def _service_cert_pem(path: str) -> str:
    pem = _read(path)
    try:
        load_cert(pem)
    except ValueError:
        raise ValueError(f"{path} is not a PEM certificate") from None
    return pem.decode()


def _encryption_key(path: str) -> rsa.RSAPrivateKey:
    """The member's recovery encryption key: an RSA private key in an unencrypted PEM file."""
    try:
        key = serialization.load_pem_private_key(_read(path), None)
    except TypeError:  # the file needs a password
        raise ValueError(f"{path} is a password-protected key; give an unencrypted PEM RSA private key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{path} is not a PEM private key (the member's RSA encryption key)") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        kind = "an EC" if isinstance(key, ec.EllipticCurvePrivateKey) else f"a {type(key).__name__}"
        raise ValueError(f"{path} holds {kind} private key, not the member's RSA encryption key")
    return key


def _created_at(text: str | None) -> int | None:
    if text is None:
        return None
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp())


def _proposal_actions(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.previous_service_cert and not args.transition_service_to_open:
        raise ValueError("--previous-service-cert goes with --transition-service-to-open")
    if args.recovery_role and not args.set_member:
        raise ValueError("--recovery-role goes with --set-member")
    if args.actions:
        body = orjson.loads(_read(args.actions))
        if not isinstance(body, dict) or not isinstance(body.get("actions"), list):
            raise ValueError(f'{args.actions} must hold {{"actions": [...]}}')
        return list(body["actions"])
    if args.set_user:
        return [set_user(load_cert(_read(args.set_user)))]
    if args.remove_user:
        return [action("remove_user", user_id=args.remove_user)]
    if args.set_member:
        key = _read(args.encryption_key).decode() if args.encryption_key else None
        return [set_member(load_cert(_read(args.set_member)), key, recovery_role=args.recovery_role)]
    if args.trust_node:
        return [transition_node_to_trusted(args.trust_node)]
    if args.transition_service_to_open:
        previous = _service_cert_pem(args.previous_service_cert) if args.previous_service_cert else None
        return [transition_service_to_open(_service_cert_pem(args.transition_service_to_open), previous)]
    if args.set_constitution:
        return [action("set_constitution", constitution="\n".join(_read(p).decode() for p in args.set_constitution))]
    if args.set_js_app:
        try:
            return [action("set_js_app", bundle=read_bundle(args.set_js_app))]
        except BundleInvalid as e:
            raise ValueError(str(e)) from None
    if args.trigger:
        return [action(args.trigger)]
    raise ValueError("say what to propose (see --help)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyccf-member", description="Act as a consortium member: sign governance requests and, with --url, "
        "send them to the service's /gov API.", epilog="Run `pyccf-member COMMAND --help` for a command's options.")
    parser.add_argument("--cert", required=True, metavar="PEM", help="the member's certificate")
    parser.add_argument("--key", required=True, metavar="PEM", help="the member's private key")
    parser.add_argument("--url", help="send to this node (https://host:port) instead of printing the signed body")
    parser.add_argument("--service-cert", metavar="PEM",
                        help="with --url: the service certificate the node's TLS certificate must verify against")
    parser.add_argument("--created-at", metavar="TIME",
                        help="ISO 8601 time signed as ccf.gov.msg.created_at (default: now)")
    parser.add_argument("--out", metavar="FILE", help="without --url: write the signed body here, not to stdout")
    parser.add_argument("--json", action="store_true", help="print the node's answer as JSON")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # --json and --quiet may also come after the command
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the answer as JSON")
    after.add_argument("-q", "--quiet", action="store_true", default=False,
                       help="print only the proposal id (propose) or the proposal's state (vote, withdraw, show)")

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[after], help=text, description=text)

    propose = add("propose", "propose one action (or the actions of a file); prints the proposal's id and state")
    group = propose.add_mutually_exclusive_group(required=True)
    group.add_argument("--actions", metavar="FILE", help='a JSON file {"actions": [{"name": ..., "args": ...}]}')
    group.add_argument("--set-user", metavar="CERT", help="add the user with this certificate (PEM)")
    group.add_argument("--remove-user", metavar="USER_ID", help="remove a user (its id: SHA-256 of its cert's DER)")
    group.add_argument("--set-member", metavar="CERT", help="add the member with this certificate (PEM)")
    group.add_argument("--trust-node", metavar="NODE_ID",
                       help="transition_node_to_trusted: trust a node that joined the open service (Pending)")
    group.add_argument("--transition-service-to-open", metavar="SERVICE_CERT",
                       help="open the service whose certificate this is (after a recovery: the new certificate)")
    group.add_argument("--set-constitution", nargs="+", metavar="JS_FILE",
                       help="replace the constitution with these files, concatenated")
    group.add_argument("--set-js-app", metavar="BUNDLE_DIR",
                       help="install a JavaScript app: a directory with bundle.json, or app.json and src/")
    group.add_argument("--trigger", choices=["trigger_ledger_rekey", "trigger_ledger_chunk", "trigger_snapshot",
                                             "trigger_recovery_shares_refresh", "remove_js_app",
                                             "refresh_js_app_bytecode_cache"], help="an action without arguments")
    propose.add_argument("--encryption-key", metavar="PEM",
                         help="with --set-member: the member's RSA encryption public key (a recovery member)")
    propose.add_argument("--recovery-role", choices=["Participant", "Owner", "NonParticipant"],
                         help="with --set-member and --encryption-key: Participant (the default, one share of the "
                              "threshold) or Owner (the whole recovery key: recovers the service alone)")
    propose.add_argument("--previous-service-cert", metavar="OLD_SERVICE_CERT",
                         help="with --transition-service-to-open: the certificate of the service being recovered")
    vote = add("vote", "vote on a proposal; prints its state after the ballot")
    vote.add_argument("proposal_id", help="the proposal's id, or a unique prefix of it")
    choice = vote.add_mutually_exclusive_group(required=True)
    choice.add_argument("--approve", action="store_true", help="a ballot that always approves")
    choice.add_argument("--reject", action="store_true", help="a ballot that always rejects")
    choice.add_argument("--ballot", metavar="JS_FILE", help="a ballot of your own (export function vote(...))")
    withdraw = add("withdraw", "withdraw a proposal of this member's")
    withdraw.add_argument("proposal_id", help="the proposal's id, or a unique prefix of it")
    add("state-digest", "print the member's state digest, the one `ack` acknowledges")
    ack = add("ack", "acknowledge the state digest: a new member becomes Active")
    ack.add_argument("--state-digest", metavar="JSON_FILE",
                     help="the digest to acknowledge (needed without --url; with --url, fetched when left out)")
    show = add("show", "show a proposal (with --url); a completed proposal is removed once a later one completes")
    show.add_argument("proposal_id", help="the proposal's id, or a unique prefix of it")
    add("list", "list the proposals the service holds (with --url)")
    share = add("recovery-share", "submit this member's recovery share to a recovering service (with --url)")
    share.add_argument("--enc-key", required=True, metavar="PEM",
                       help="the member's RSA encryption private key (its public half was given to the service)")
    return parser


def _ballot(args: argparse.Namespace) -> str | None:
    return _read(args.ballot).decode() if args.ballot else (REJECT_BALLOT if args.reject else None)


def _signed_body(args: argparse.Namespace, signer: MemberSigner) -> tuple[bytes, dict[str, Any]]:
    """The signed request for `args.command`, and a summary of it."""
    created_at = _created_at(args.created_at)
    summary: dict[str, Any] = {"command": args.command, "member_id": signer.member_id}
    if args.command == "propose":
        actions = _proposal_actions(args)
        summary["actions"] = [a["name"] for a in actions]
        return signer.proposal(actions, created_at=created_at), summary
    if args.command in ("vote", "withdraw") and not re.fullmatch(r"[0-9a-f]{64}", args.proposal_id):
        raise ValueError(f"{args.proposal_id} is not a full proposal id (64 hex digits): a prefix is resolved "
                         "only with --url")
    if args.command == "vote":
        summary["proposal_id"] = args.proposal_id
        ballot = _ballot(args)
        return (signer.ballot(args.proposal_id, ballot, created_at=created_at) if ballot else
                signer.ballot(args.proposal_id, created_at=created_at)), summary
    if args.command == "withdraw":
        summary["proposal_id"] = args.proposal_id
        return signer.withdrawal(args.proposal_id, created_at=created_at), summary
    if args.command == "state-digest":
        return signer.state_digest_update(created_at=created_at), summary
    if args.command == "ack":
        if not args.state_digest:
            raise ValueError("ack without --url needs --state-digest FILE")
        return signer.ack(orjson.loads(_read(args.state_digest)), created_at=created_at), summary
    raise ValueError(f"{args.command} needs --url")


def _print_signed(args: argparse.Namespace, body: bytes, summary: dict[str, Any], signer: MemberSigner) -> None:
    summary["bytes"] = len(body)
    if args.out:
        with open(args.out, "wb") as f:
            f.write(body)
        summary["out"] = args.out
    else:
        sys.stdout.buffer.write(body)
    if args.json:
        print(orjson.dumps(summary).decode(), file=sys.stderr)
    else:
        extra = f" {summary.get('actions') or summary.get('proposal_id') or ''}".rstrip()
        print(f"signed {args.command}{extra} as member {signer.member_id[:12]}... ({len(body)} bytes)",
              file=sys.stderr)


def _describe(proposal: dict[str, Any]) -> str:
    line = f"proposal {proposal['proposalId']} {proposal['proposalState']} ({proposal.get('ballotCount', 0)} ballots)"
    if proposal.get("failure"):
        line += f": {proposal['failure'].get('reason')}"
    return line


def _submitted(result: dict[str, Any]) -> str:
    """`k/N shares submitted`, and a second line once the shares were enough to start the private recovery."""
    message = str(result.get("message", ""))
    count, threshold = result.get("submittedCount"), result.get("recoveryThreshold")
    if count is None or threshold is None:
        counts = re.match(r"\s*(\d+)/(\d+)", message)
        count, threshold = counts.groups() if counts else ("?", "?")
    line = "full recovery key submitted" if result.get("fullKeySubmitted") else f"{count}/{threshold} shares submitted"
    if "end of recovery procedure initiated" in message.lower():
        line += "\nend of recovery procedure initiated"
    return line


def _submit_recovery_share(api: MemberApi, enc_key: rsa.RSAPrivateKey, enc_key_path: str) -> dict[str, Any]:
    try:
        return api.submit_recovery_share(enc_key)
    except orjson.JSONDecodeError:
        raise
    except ValueError as e:  # the share did not decrypt (or was not base64): the wrong key for this member
        raise ValueError(f"cannot decrypt member {api.member_id[:12]}...'s recovery share with {enc_key_path}: "
                         f"is it this member's encryption key? ({_one_line(e)})") from None


def _send(args: argparse.Namespace, signer: MemberSigner) -> tuple[Any, str]:
    """Run the command against the node; returns the answer and a line describing it."""
    if not args.service_cert:
        raise ValueError("--url needs --service-cert")
    enc_key = _encryption_key(args.enc_key) if args.command == "recovery-share" else None
    api = Client(args.url, args.service_cert, cert=args.cert, key=args.key).member()
    created_at = _created_at(args.created_at)
    if args.command == "propose":
        result = api.propose(_proposal_actions(args), created_at=created_at)
        return result, result["proposalId"] if args.quiet else _describe(result)
    if args.command in ("vote", "withdraw", "show"):
        proposal_id = api.full_proposal_id(args.proposal_id)
        try:
            if args.command == "vote":
                result = api.vote(proposal_id, ballot=_ballot(args), created_at=created_at)
            elif args.command == "withdraw":
                withdrawn = api.withdraw(proposal_id, created_at=created_at)
                if not withdrawn:
                    return withdrawn, f"proposal {proposal_id} is unknown"
                result = withdrawn
            else:
                result = api.proposal(proposal_id)
        except ServiceError as e:
            if e.code == "ProposalNotFound":  # CCF keeps only the latest completed proposal
                raise ServiceError(e.status, e.code, e.message + " (a completed proposal is removed once a later "
                                   "proposal completes)") from None
            raise
        return result, result["proposalState"] if args.quiet else _describe(result)
    if args.command == "state-digest":
        digest = api.state_digest(created_at=created_at)
        return digest, f"state digest {digest['stateDigest']}"
    if args.command == "ack":
        given: dict[str, Any] | None = orjson.loads(_read(args.state_digest)) if args.state_digest else None
        api.ack(given, created_at=created_at)
        return {"memberId": signer.member_id, "status": "Active"}, f"member {signer.member_id} is Active"
    if args.command == "recovery-share":
        assert enc_key is not None
        submitted = _submit_recovery_share(api, enc_key, args.enc_key)
        return submitted, _submitted(submitted)
    proposals = api.proposals()
    return {"value": proposals}, "\n".join(_describe(p) for p in proposals) or "no proposals"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        signer = MemberSigner.from_pem(_read(args.key), _read(args.cert))
        if args.url:
            result, line = _send(args, signer)
            print(orjson.dumps(result).decode() if args.json else line)
            return 0
        body, summary = _signed_body(args, signer)
    except (ServiceError, ClientError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    except (OSError, ValueError, orjson.JSONDecodeError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    _print_signed(args, body, summary, signer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
