"""The `/node` frontend (CCF's src/node/rpc/node_frontend.h): what operators and probes ask a node, unauthenticated.

Answers come from the KV (service, nodes, configuration) and from the node itself (`ctx.node`, a
`NodeStatus`: its id, state, quote, certificates, session metrics). Shapes and status codes follow CCF:
unknown node 404 `ResourceNotFound`, `ready/app` and `ready/gov` 204 or 503 with no body, `primary` (GET and
HEAD) 200 on the primary (this issue's single node always is), `service/previous_identity` 404 unless the service
is a recovery.

Not here: joining (`/node/join`) and node removal come with replication.
"""

from __future__ import annotations

import base64
from typing import Any, Protocol

import orjson

from ledger.genesis import VirtualQuote
from ledger.kv import Tx
from ledger.tables import NODES_INFO, PREVIOUS_SERVICE_IDENTITY, SERVICE_CONFIG, SERVICE_INFO, SINGLETON_KEY
from network.enclave.common_endpoints import LedgerView, add_common_endpoints
from network.enclave.endpoints import EndpointContext, EndpointError, Endpoints
from network.enclave.http import Response

CCF_VERSION = "ccf-py-6.0.0"


class NodeStatus(Protocol):
    """What the `/node` handlers need from the node."""

    @property
    def node_id(self) -> str: ...

    @property
    def node_state(self) -> str: ...

    @property
    def startup_seqno(self) -> int: ...

    @property
    def quote(self) -> VirtualQuote: ...

    @property
    def self_signed_certificate(self) -> str: ...

    def primary_id(self) -> str | None: ...

    def frontend_open(self, prefix: str) -> bool: ...

    def session_metrics(self) -> dict[str, Any]: ...

    def js_metrics(self) -> dict[str, Any]: ...


def _status(ctx: EndpointContext) -> NodeStatus:
    node: NodeStatus = ctx.node
    return node


def _node_entry(tx: Tx, node_id: str, primary: str | None) -> dict[str, Any]:
    info = tx.get_json(NODES_INFO, node_id)
    if not isinstance(info, dict):
        raise EndpointError(404, "ResourceNotFound", "Node not found")
    interfaces = {name: {**i, "protocol": "tcp", "app_protocol": "HTTP1"}
                  for name, i in info.get("rpc_interfaces", {}).items()}
    return {"node_id": node_id, "status": info.get("status"), "primary": node_id == primary,
            "rpc_interfaces": interfaces, "node_data": info.get("node_data"),
            "last_written": tx.get_version(NODES_INFO, node_id)}


def _quote(node_id: str, quote: VirtualQuote) -> dict[str, Any]:
    return {"node_id": node_id, "raw": base64.b64encode(quote.raw()).decode(), "endorsements": "",
            "format": "Insecure_Virtual", "measurement": quote.measurement}


def build_node_frontend(ledger: LedgerView) -> Endpoints:
    node = Endpoints("/node")
    add_common_endpoints(node, ledger, "CCF Node API")

    @node.endpoint("GET", "/network")
    def network(ctx: EndpointContext) -> object:
        """The service as this node sees it."""
        info = ctx.tx.get_json(SERVICE_INFO, SINGLETON_KEY)
        if not isinstance(info, dict):
            raise EndpointError(404, "ResourceNotFound", "No service is available to accept transactions")
        return {"service_status": info.get("status"), "service_certificate": info.get("cert"),
                "current_view": ledger.view, "primary_id": _status(ctx).primary_id(),
                "recovery_count": info.get("recovery_count", 0), "service_data": info.get("service_data"),
                "current_service_create_txid": info.get("current_service_create_txid")}

    @node.endpoint("GET", "/network/nodes")
    def nodes(ctx: EndpointContext) -> object:
        """Nodes, filtered by ?status=, ?host=, ?port=."""
        primary = _status(ctx).primary_id()
        wanted_status = ctx.query.get("status", [None])[0]
        host = ctx.query.get("host", [None])[0]
        port = ctx.query.get("port", [None])[0]
        out = []
        for key in ctx.tx.keys(NODES_INFO):
            entry = _node_entry(ctx.tx, key.decode(), primary)
            if wanted_status is not None and entry["status"] != wanted_status:
                continue
            addresses = [i.get("published_address", "") for i in entry["rpc_interfaces"].values()]
            if host is not None and not any(a.rpartition(":")[0] == host for a in addresses):
                continue
            if port is not None and not any(a.rpartition(":")[2] == port for a in addresses):
                continue
            out.append(entry)
        return {"nodes": out}

    @node.endpoint("GET", "/network/nodes/self")
    def self_node(ctx: EndpointContext) -> object:
        """This node."""
        return _node_entry(ctx.tx, _status(ctx).node_id, _status(ctx).primary_id())

    @node.endpoint("GET", "/network/nodes/primary")
    def primary_node(ctx: EndpointContext) -> object:
        """The primary."""
        primary = _status(ctx).primary_id()
        if primary is None:
            raise EndpointError(404, "ResourceNotFound", "No configured primary")
        return _node_entry(ctx.tx, primary, primary)

    @node.endpoint("GET", "/network/nodes/{node_id}")
    def one_node(ctx: EndpointContext) -> object:
        """One node."""
        return _node_entry(ctx.tx, ctx.params["node_id"], _status(ctx).primary_id())

    @node.endpoint("GET", "/network/removable_nodes")
    def removable(ctx: EndpointContext) -> object:
        """Retired nodes whose retirement is committed."""
        out = []
        for key, raw in ctx.tx.items(NODES_INFO):
            info = orjson.loads(raw)
            if info.get("status") == "Retired" and info.get("retired_committed"):
                out.append(_node_entry(ctx.tx, key.decode(), _status(ctx).primary_id()))
        return {"nodes": out}

    @node.endpoint("HEAD", "/primary")
    @node.endpoint("GET", "/primary")
    def primary(ctx: EndpointContext) -> object:
        """200 on the primary, 404 elsewhere."""
        status = _status(ctx)
        if status.primary_id() != status.node_id:
            raise EndpointError(404, "ResourceNotFound", "Node is not primary")
        return Response(200)

    @node.endpoint("GET", "/backup")
    def backup(ctx: EndpointContext) -> object:
        """200 on a backup, 404 on the primary."""
        status = _status(ctx)
        if status.primary_id() == status.node_id:
            raise EndpointError(404, "ResourceNotFound", "Node is not backup")
        return Response(200)

    @node.endpoint("GET", "/state")
    def state(ctx: EndpointContext) -> object:
        """This node's state."""
        status = _status(ctx)
        return {"node_id": status.node_id, "state": status.node_state,
                "last_signed_seqno": ledger_last_signed(ledger), "startup_seqno": status.startup_seqno}

    @node.endpoint("GET", "/version")
    def version(ctx: EndpointContext) -> object:
        """Versions of this node's code."""
        return {"ccf_version": CCF_VERSION, "quickjs_version": "quickjs-ng", "unsafe": False}

    @node.endpoint("GET", "/quotes")
    def quotes(ctx: EndpointContext) -> object:
        """Quotes of trusted nodes."""
        out = []
        for key, raw in ctx.tx.items(NODES_INFO):
            info = orjson.loads(raw)
            quote_info = info.get("quote_info", {})
            if info.get("status") != "Trusted" or quote_info.get("format") != "Insecure_Virtual":
                continue
            quote = VirtualQuote.parse(base64.b64decode(quote_info.get("quote", "")))
            out.append(_quote(key.decode(), quote))
        return {"quotes": out}

    @node.endpoint("GET", "/quotes/self")
    def quote_self(ctx: EndpointContext) -> object:
        """This node's quote."""
        status = _status(ctx)
        return _quote(status.node_id, status.quote)

    @node.endpoint("GET", "/self_signed_certificate")
    def self_signed(ctx: EndpointContext) -> object:
        """This node's self-signed certificate."""
        return {"self_signed_certificate": _status(ctx).self_signed_certificate}

    @node.endpoint("GET", "/service/previous_identity")
    def previous_identity(ctx: EndpointContext) -> object:
        """The previous service identity, after a recovery."""
        previous = ctx.tx.get_json(PREVIOUS_SERVICE_IDENTITY, SINGLETON_KEY)
        if not isinstance(previous, str):
            raise EndpointError(404, "ResourceNotFound", "This service is not a recovery of a previous service.")
        return {"previous_service_identity": previous}

    @node.endpoint("GET", "/service/configuration")
    def configuration(ctx: EndpointContext) -> object:
        """The service configuration."""
        config = ctx.tx.get_json(SERVICE_CONFIG, SINGLETON_KEY)
        return config if isinstance(config, dict) else {}

    @node.endpoint("GET", "/ready/app")
    def ready_app(ctx: EndpointContext) -> object:
        """204 once the application frontend is open."""
        return Response(204 if _status(ctx).frontend_open("/app") else 503)

    @node.endpoint("GET", "/ready/gov")
    def ready_gov(ctx: EndpointContext) -> object:
        """204 once the governance frontend is open."""
        return Response(204 if _status(ctx).frontend_open("/gov") else 503)

    @node.endpoint("GET", "/metrics")
    def metrics(ctx: EndpointContext) -> object:
        """Session metrics."""
        return {"sessions": _status(ctx).session_metrics()}

    @node.endpoint("GET", "/js_metrics")
    def js_metrics(ctx: EndpointContext) -> object:
        """Limits of the governance JavaScript runtime."""
        return _status(ctx).js_metrics()

    return node


def ledger_last_signed(ledger: LedgerView) -> int:
    last = getattr(ledger, "last_signature_seqno", 0)
    return int(last)
