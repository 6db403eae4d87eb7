#!/usr/bin/env python3
"""Act as a consortium member: `member.py --cert C --key K [--url URL --service-cert PEM] COMMAND ...`.

With `--url`, each command is signed and sent to the node's `/gov` API (api-version 2024-07-01) and the
result printed (a line a person can read, or the JSON answer with `--json`). Without it, the signed
COSE_Sign1 body goes to --out (or stdout), ready to POST with `Content-Type: application/cose`.
  propose  (--actions FILE | --set-user CERT | --remove-user ID | --set-member CERT [--encryption-key PEM]
            | --transition-service-to-open SERVICE_CERT [--previous-service-cert OLD_SERVICE_CERT]
            | --set-constitution JS_FILE [JS_FILE ...] | --trigger ACTION)
            (a recovered service is opened with both: its new certificate and the one it recovers)
  vote PROPOSAL_ID (--approve | --reject | --ballot JS_FILE)
  withdraw PROPOSAL_ID
  state-digest                 (the digest to ack)
  ack [--state-digest JSON_FILE] (with --url and no file: fetch the digest and ack it, i.e. activate)
  show PROPOSAL_ID, list       (--url only)
  recovery-share --enc-key PEM (--url only: fetch this member's encrypted recovery share, decrypt it with the
                               member's RSA encryption private key and submit it; prints `k/N shares submitted`)
Errors print one line (`error: ...`, with CCF's code when the node refused) and exit 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import re
import sys
from typing import Any

import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from governance.member_client import (
    REJECT_BALLOT,
    MemberSigner,
    action,
    set_member,
    set_user,
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
        return [set_member(load_cert(_read(args.set_member)), key)]
    if args.transition_service_to_open:
        previous = _service_cert_pem(args.previous_service_cert) if args.previous_service_cert else None
        return [transition_service_to_open(_service_cert_pem(args.transition_service_to_open), previous)]
    if args.set_constitution:
        return [action("set_constitution", constitution="\n".join(_read(p).decode() for p in args.set_constitution))]
    if args.trigger:
        return [action(args.trigger)]
    raise ValueError("say what to propose (see --help)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cert", required=True, help="member certificate (PEM)")
    parser.add_argument("--key", required=True, help="member private key (PEM)")
    parser.add_argument("--url", help="send to this node (https://host:port) instead of printing the body")
    parser.add_argument("--service-cert", help="the service certificate (PEM) to trust, with --url")
    parser.add_argument("--created-at", help="ISO 8601 time for ccf.gov.msg.created_at (default: now)")
    parser.add_argument("--out", help="write the signed body here instead of stdout")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    # --json may also come after the command
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the result as JSON")
    add = functools.partial(sub.add_parser, parents=[after])
    propose = add("propose")
    group = propose.add_mutually_exclusive_group(required=True)
    group.add_argument("--actions")
    group.add_argument("--set-user")
    group.add_argument("--remove-user")
    group.add_argument("--set-member")
    group.add_argument("--transition-service-to-open")
    group.add_argument("--set-constitution", nargs="+")
    group.add_argument("--trigger", choices=["trigger_ledger_rekey", "trigger_ledger_chunk", "trigger_snapshot",
                                             "trigger_recovery_shares_refresh"])
    propose.add_argument("--encryption-key")
    propose.add_argument("--previous-service-cert", metavar="OLD_SERVICE_CERT",
                         help="with --transition-service-to-open: the certificate of the service being recovered")
    vote = add("vote")
    vote.add_argument("proposal_id")
    choice = vote.add_mutually_exclusive_group(required=True)
    choice.add_argument("--approve", action="store_true")
    choice.add_argument("--reject", action="store_true")
    choice.add_argument("--ballot")
    withdraw = add("withdraw")
    withdraw.add_argument("proposal_id")
    add("state-digest")
    ack = add("ack")
    ack.add_argument("--state-digest")
    show = add("show")
    show.add_argument("proposal_id")
    add("list")
    share = add("recovery-share", help="submit this member's recovery share to a recovering service (--url only)")
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
    line = f"{count}/{threshold} shares submitted"
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
        return result, _describe(result)
    if args.command == "vote":
        ballot = _ballot(args)
        result = api.vote(args.proposal_id, ballot=ballot, created_at=created_at)
        return result, _describe(result)
    if args.command == "withdraw":
        withdrawn = api.withdraw(args.proposal_id, created_at=created_at)
        return withdrawn, _describe(withdrawn) if withdrawn else f"proposal {args.proposal_id} is unknown"
    if args.command == "state-digest":
        digest = api.state_digest(created_at=created_at)
        return digest, f"state digest {digest['stateDigest']}"
    if args.command == "ack":
        given: dict[str, Any] | None = orjson.loads(_read(args.state_digest)) if args.state_digest else None
        api.ack(given, created_at=created_at)
        return {"memberId": signer.member_id, "status": "Active"}, f"member {signer.member_id} is Active"
    if args.command == "show":
        result = api.proposal(args.proposal_id)
        return result, _describe(result)
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
