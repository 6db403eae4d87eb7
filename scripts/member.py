#!/usr/bin/env python3
"""Sign governance requests as a consortium member: `member.py --cert C --key K COMMAND ...`.

Commands write the signed COSE_Sign1 body to --out (or stdout), ready to POST with
`Content-Type: application/cose`:
  propose  (--actions FILE | --set-user CERT | --remove-user ID | --set-member CERT [--encryption-key PEM]
            | --transition-service-to-open SERVICE_CERT | --set-constitution JS_FILE [JS_FILE ...]
            | --trigger ACTION)
  vote PROPOSAL_ID (--approve | --reject | --ballot JS_FILE)
  withdraw PROPOSAL_ID
  state-digest                 (ask the node for the digest to ack)
  ack --state-digest JSON_FILE (the object the node returned)
A one-line summary goes to stderr (or, with --json, a JSON object); errors print one line and exit 1.
Sending them to a node comes with the node (the `/gov` frontend).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

import orjson

from governance.member_client import (
    REJECT_BALLOT,
    MemberSigner,
    action,
    set_member,
    set_user,
    transition_service_to_open,
)
from ledger.identity import load_cert


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _created_at(text: str | None) -> int | None:
    if text is None:
        return None
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp())


def _proposal_actions(args: argparse.Namespace) -> list[dict[str, Any]]:
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
        return [transition_service_to_open(_read(args.transition_service_to_open).decode())]
    if args.set_constitution:
        return [action("set_constitution", constitution="\n".join(_read(p).decode() for p in args.set_constitution))]
    if args.trigger:
        return [action(args.trigger)]
    raise ValueError("say what to propose (see --help)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cert", required=True, help="member certificate (PEM)")
    parser.add_argument("--key", required=True, help="member private key (PEM)")
    parser.add_argument("--created-at", help="ISO 8601 time for ccf.gov.msg.created_at (default: now)")
    parser.add_argument("--out", help="write the signed body here instead of stdout")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    propose = sub.add_parser("propose")
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
    vote = sub.add_parser("vote")
    vote.add_argument("proposal_id")
    choice = vote.add_mutually_exclusive_group(required=True)
    choice.add_argument("--approve", action="store_true")
    choice.add_argument("--reject", action="store_true")
    choice.add_argument("--ballot")
    withdraw = sub.add_parser("withdraw")
    withdraw.add_argument("proposal_id")
    sub.add_parser("state-digest")
    ack = sub.add_parser("ack")
    ack.add_argument("--state-digest", required=True)
    args = parser.parse_args(argv)
    try:
        signer = MemberSigner.from_pem(_read(args.key), _read(args.cert))
        created_at = _created_at(args.created_at)
        summary: dict[str, Any] = {"command": args.command, "member_id": signer.member_id}
        if args.command == "propose":
            actions = _proposal_actions(args)
            body = signer.proposal(actions, created_at=created_at)
            summary["actions"] = [a["name"] for a in actions]
        elif args.command == "vote":
            ballot = _read(args.ballot).decode() if args.ballot else (REJECT_BALLOT if args.reject else None)
            body = signer.ballot(args.proposal_id, ballot, created_at=created_at) if ballot else \
                signer.ballot(args.proposal_id, created_at=created_at)
            summary["proposal_id"] = args.proposal_id
        elif args.command == "withdraw":
            body = signer.withdrawal(args.proposal_id, created_at=created_at)
            summary["proposal_id"] = args.proposal_id
        elif args.command == "state-digest":
            body = signer.state_digest_update(created_at=created_at)
        else:
            body = signer.ack(orjson.loads(_read(args.state_digest)), created_at=created_at)
    except (OSError, ValueError, orjson.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
