"""What the sandbox prints once its service is ready: where it is, and commands to try.

Every command is printed so that it runs as printed, from the directory the sandbox was started in, in bash,
zsh or sh, without the virtual environment activated: tools are named by their path in the environment
(`.venv/bin/pyccf-member`, `.venv/bin/ccf_cose_sign1`), no variable holds several words (zsh would not split
it), no pipeline hides a failing first command, and files the commands write go under the workspace. Each
command is one line indented by two spaces (long ones continue with a trailing backslash); the e2e tests run
them exactly as printed.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceView:
    """What the sandbox learnt of the running service."""

    node_urls: list[str]
    primary_url: str | None
    view: int
    status: str
    create_txid: str | None
    recovery_count: int
    origin: str  # "new", "resumed" or "recovered"


def _rel(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def tool(name: str) -> str:
    """The path of a command of this environment (`.venv/bin/NAME` when run from the repository root)."""
    return _rel(os.path.join(os.path.dirname(sys.executable), name))


def headline(service: ServiceView) -> str:
    nodes = len(service.node_urls)
    what = {"new": "Started a new service", "resumed": f"Resumed the service created at {service.create_txid}",
            "recovered": f"Recovered the lost service into a new one, created at {service.create_txid}"}
    recovered = f" (recovery count {service.recovery_count})" if service.recovery_count else ""
    return (f"{what[service.origin]}{recovered}: {service.status} in view {service.view}, {nodes} "
            f"node{'s' if nodes > 1 else ''}, primary {service.primary_url or 'not elected yet'}")


DEFAULT_APP = "app.logging:app"
INFERENCE_APP = "app.inference:app"


def _app_commands(app: str, url: str, user: str, member: str) -> str:
    """What to try on the application the nodes serve."""
    if app == INFERENCE_APP:
        return f"""Upload an ONNX model of yours as user0 (MODEL.onnx), approve its digest as member0 (DIGEST:
the one the upload answered), and run it (INPUT: an input name that GET /app/models lists):
  curl -X PUT {url}/app/models/mymodel -H 'content-type: application/octet-stream' \\
    --data-binary @MODEL.onnx {user}
  echo '{{"actions": [{{"name": "approve_model", "args": {{"name": "mymodel", "digest": "DIGEST"}}}}]}}' \\
    > $C/approve.json
  P=$({member} propose --actions $C/approve.json --quiet)
  {member} vote $P --approve
  curl {url}/app/models {user}
  curl -X POST {url}/app/models/mymodel:infer -H 'content-type: application/json' \\
    --data-binary '{{"inputs": {{"INPUT": [[1.0, 2.0]]}}}}' {user}
"""
    return f"""The application ({app}) serves its endpoints under {url}/app; they are listed by:
  curl {url}/app/api {user}
"""


def guide(service: ServiceView, common: str, app: str = DEFAULT_APP) -> str:
    url = service.primary_url or service.node_urls[0]
    c = _rel(common)
    tls = "--cacert $C/service_cert.pem"
    user = f"{tls} --cert $C/user0_cert.pem --key $C/user0_privk.pem"
    member = (f"{tool('pyccf-member')} --cert $C/member0_cert.pem --key $C/member0_privk.pem \\\n"
              f"    --url {url} --service-cert $C/service_cert.pem")
    nodes = "\n".join(f"  {u}{' (primary)' if u == service.primary_url else ''}" for u in service.node_urls)
    ledgers = [_rel(os.path.join(os.path.dirname(common), f"sandbox_{i}", "ledger"))
               for i in range(len(service.node_urls))]
    compare = (f"Compare the nodes' ledgers, byte for byte (--uncommitted: also the newest, still open chunk):\n"
               f"  {tool('pyccf-audit')} compare {' '.join(ledgers)} --uncommitted\n") if len(ledgers) > 1 else ""
    if app != DEFAULT_APP:
        verify = "Verify a node's ledger offline (framing, Merkle roots, signatures, the service identity):"
        return f"""
{headline(service)}
Service certificate: {c}/service_cert.pem; nodes:
{nodes}

Commands to try, from {os.getcwd()}:

The workspace's identities (member0, user0) and the service certificate:
  C={c}
{_app_commands(app, url, user, member)}{verify}
  {tool('pyccf-audit')} ledger {ledgers[0]} --service-cert $C/service_cert.pem --uncommitted
{compare}"""
    return f"""
{headline(service)}
Service certificate: {c}/service_cert.pem; nodes:
{nodes}

Commands to try, from {os.getcwd()}, as printed (any shell):

The workspace's identities (member0, user0) and the service certificate:
  C={c}
Write a private record as user0 (record_claim binds SHA-256 of the message into its receipt), and read it back:
  curl {url}/app/log/private -D $C/write_headers.txt \\
    -H 'content-type: application/json' --data-binary '{{"id": 42, "msg": "hello", "record_claim": true}}' \\
    {user}
  curl '{url}/app/log/private?id=42' \\
    {user}
The write's transaction id (its x-ms-ccf-transaction-id header), its status, and the service's commit point:
  TX=$(awk 'tolower($1) == "x-ms-ccf-transaction-id:" {{sub(/\\r/, "", $2); print $2}}' $C/write_headers.txt)
  curl "{url}/app/tx?transaction_id=$TX" \\
    {user}
  curl {url}/app/commit \\
    {user}
Its receipt (retried until the write commits), then verified offline against the service certificate alone:
  curl --fail --silent --show-error --retry 5 --retry-all-errors "{url}/app/receipt?transaction_id=$TX" \\
    {user} -o $C/receipt.json
  {tool('pyccf-audit')} receipt $C/receipt.json --service-cert $C/service_cert.pem --claims-of-msg hello
A governance proposal by member0 (a ledger rekey), then member0's vote (a majority of one accepts it):
  P=$({member} propose --trigger trigger_ledger_rekey --quiet)
  {member} vote $P --approve
The same kind of proposal signed with the ccf package's ccf_cose_sign1 and sent with curl:
  echo '{{"actions": [{{"name": "trigger_ledger_rekey"}}]}}' > $C/proposal.json
  {tool('ccf_cose_sign1')} --ccf-gov-msg-type proposal \\
    --ccf-gov-msg-created_at "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --signing-key $C/member0_privk.pem \\
    --signing-cert $C/member0_cert.pem --content $C/proposal.json > $C/proposal.cose
  curl '{url}/gov/members/proposals:create?api-version=2024-07-01' {tls} \\
    -H 'content-type: application/cose' --data-binary @$C/proposal.cose
Verify a node's ledger offline (framing, Merkle roots, signatures, the service identity):
  {tool('pyccf-audit')} ledger {ledgers[0]} --service-cert $C/service_cert.pem --uncommitted
{compare}"""
