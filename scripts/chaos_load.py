"""The load of a chaos run: client processes writing and reading the logging app's private records over all
nodes, recording every operation, and a resolver that learns each write's fate from `/app/tx`.

A client keeps one TLS connection (a session) to one node; after any transport error it closes it, records
the operation as `info` (a write may or may not have happened), and opens a new session on the next node.
Nothing is retried (a retried write could apply twice). Answers: 200 → a write's txid goes to the resolver, a
read is `ok`; a redirect (307/308: not executed) → `fail`, and the next operation goes to the named node in a new
session; a 4xx, or a 503 whose code says the request was not executed (`NOT_EXECUTED_503`) → `fail`, except a
read of no record (`ok`, value null); a refused connection → `fail`; anything else → `info`.
The final reads (`final_reads`), taken once every node's commit point covers every write reported Committed,
are marked `realtime`: the checker holds them to real time.

Guarantees: every invoke is followed by exactly one completion once `finish` returns (unknown ones as `info`).
"""

from __future__ import annotations

import http.client
import random
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import orjson

from network.client.connection import ServiceClient
from scripts.chaos_cluster import Cluster
from scripts.chaos_history import EventType, Recorder

TXID = "x-ms-ccf-transaction-id"


class _Session:
    def __init__(self, cluster: Cluster, node: int, timeout: float) -> None:
        self.cluster, self.node, self.timeout = cluster, node, timeout
        self.conn: http.client.HTTPSConnection | None = None
        self.ended = False  # the server closed the connection after its last answer

    def _connect(self, node: int) -> http.client.HTTPSConnection:
        c = self.cluster
        context = ssl.create_default_context(cafile=f"{c.common}/service_cert.pem")
        context.load_cert_chain(f"{c.common}/user0_cert.pem", f"{c.common}/user0_privk.pem")
        return http.client.HTTPSConnection("127.0.0.1", c.ports[node], context=context, timeout=self.timeout)

    def request(self, method: str, path: str, body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        """One attempt; transport errors propagate."""
        if self.conn is None:
            self.conn = self._connect(self.node)
        headers = {"content-type": "application/json"} if body is not None else {}
        self.conn.request(method, path, body, headers)
        response = self.conn.getresponse()
        data = response.read()
        # the server closes the connection after some answers (408, 413, ...): the next request would silently
        # open a new TLS session, which the server treats as a new session (e.g. no longer forwarded)
        self.ended = bool(response.will_close)
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def moved_to(self, status: int, headers: dict[str, str]) -> int | None:
        """Where the next request goes if this session ended with this answer: the node a redirect names, or
        this node again when the service closed the connection; None while the session goes on."""
        if status in (307, 308):
            port = urlsplit(headers.get("location", "")).port
            return self.cluster.ports.index(port) if port in self.cluster.ports else None
        return self.node if self.ended else None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Load:
    def __init__(self, cluster: Cluster, recorder: Recorder, clients: int, keys: int, seed: int) -> None:
        self.cluster, self.recorder = cluster, recorder
        self.clients, self.keys, self.seed = clients, keys, seed
        self.stopping = threading.Event()
        # writes answered 200 whose fate is not known yet: op, process, session, key, value, txid, node
        self.pending: list[tuple[int, int, int, int, str, str, int]] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.last_commit_time: float | None = None  # when a write was last learned Committed
        self._clients: dict[int, ServiceClient] = {}  # the resolver's connections, one a node
        self._resolving = threading.Lock()
        self.highest_committed = 0  # the highest seqno of a write reported Committed

    def start(self) -> None:
        for p in range(self.clients):
            self._threads.append(threading.Thread(target=self._client, args=(p,), daemon=True))
        self._threads.append(threading.Thread(target=self._resolver, daemon=True))
        for t in self._threads:
            t.start()

    def _client(self, process: int) -> None:
        rng = random.Random(self.seed * 1000 + process)
        session_no = 0
        session = _Session(self.cluster, process % self.cluster.size, timeout=3.0)
        counter = 0
        while not self.stopping.is_set():
            key = rng.randrange(self.keys)
            if rng.random() < 0.5:
                counter += 1
                moved, refused = self._write(process, session, session_no, key, f"p{process}-{counter}")
            else:
                moved, refused = self._read(process, session, session_no, key)
            if moved is not None:  # a new session, on the node named by a redirect or the next one
                session.close()
                time.sleep(0.05)
                session = _Session(self.cluster, moved, session.timeout)
                session_no += 1
            elif refused:
                time.sleep(0.05)  # the service refused (no primary yet, ...): give it a moment
            time.sleep(rng.uniform(0.0, 0.01))
        session.close()

    def _write(self, process: int, session: _Session, session_no: int, key: int, value: str
               ) -> tuple[int | None, bool]:
        """One write; the node to move to if the session ended, and whether the service refused it."""
        rec, node = self.recorder, session.node
        op = rec.invoke(process, session_no, "write", key, value, node)
        try:
            status, headers, data = session.request("POST", "/app/log/private",
                                                    orjson.dumps({"id": key, "msg": value}))
        except (OSError, http.client.HTTPException) as e:
            rec.complete(op, process, session_no, _fate_of_error(e), "write", key, value, None, node, _why(e))
            return (node + 1) % self.cluster.size, False
        if status == 200 and headers.get(TXID):
            with self._lock:
                self.pending.append((op, process, session_no, key, value, headers[TXID], node))
            return session.moved_to(status, headers), False
        rec.complete(op, process, session_no, _fate(status, data), "write", key, value, None, node,
                     _refusal(status, data))
        return session.moved_to(status, headers), True

    def _read(self, process: int, session: _Session, session_no: int, key: int, realtime: bool = False
              ) -> tuple[int | None, bool]:
        """One read; the node to move to if the session ended, and whether the service refused it."""
        rec, node = self.recorder, session.node
        op = rec.invoke(process, session_no, "read", key, None, node)
        try:
            status, headers, data = session.request("GET", f"/app/log/private?id={key}", None)
        except (OSError, http.client.HTTPException) as e:
            rec.complete(op, process, session_no, _fate_of_error(e), "read", key, None, None, node, _why(e))
            return (node + 1) % self.cluster.size, False
        if status == 200 or (status == 400 and b"ResourceNotFound" in data):
            msg = orjson.loads(data).get("msg") if status == 200 else None
            rec.complete(op, process, session_no, "ok", "read", key, msg, headers.get(TXID), node,
                         realtime=realtime)
            return session.moved_to(status, headers), False
        rec.complete(op, process, session_no, _fate(status, data), "read", key, None, None, node,
                     _refusal(status, data))
        return session.moved_to(status, headers), True

    def final_reads(self, process: int) -> int:
        """Every key read on every node, once each node's commit point covers every write reported Committed:
        those reads are held to real time by the checker (a node that does not catch up within 30 s is read
        too, without that mark); how many reads were made."""
        target = self.highest_committed
        made = 0
        for node in range(self.cluster.size):
            deadline, caught_up = time.monotonic() + 30, False
            while not caught_up and time.monotonic() < deadline:
                caught_up = (self.cluster.commit_seqno(node) or 0) >= target
                if not caught_up:
                    time.sleep(0.1)
            session = _Session(self.cluster, node, timeout=5.0)
            for key in range(self.keys):  # a node that never caught up is read too, but not held to real time
                self._read(process, session, node, key, realtime=caught_up)
                made += 1
            session.close()
        return made

    def _resolver(self) -> None:
        while not self.stopping.is_set():
            self.resolve_once()
            self.stopping.wait(0.2)

    def resolve_once(self) -> None:
        """Ask `/app/tx` about the pending writes at or below a node's commit point (the others cannot be
        Committed yet), over one kept connection per node. One caller at a time."""
        with self._resolving:
            self._resolve()

    def _resolve(self) -> None:
        with self._lock:
            pending, self.pending = self.pending, []
        commit = max((c for c in (self._ask_commit(i) for i in range(self.cluster.size)) if c is not None),
                     default=0)
        still: list[tuple[int, int, int, int, str, str, int]] = []
        for i, item in enumerate(pending):
            op, process, session_no, key, value, txid, node = item
            seqno = int(txid.split(".")[1])
            status = self._status(txid, i) if seqno <= commit else None
            if status == "Committed":
                self.recorder.complete(op, process, session_no, "ok", "write", key, value, txid, node)
                self.last_commit_time = self.recorder.now()
                self.highest_committed = max(self.highest_committed, seqno)
            elif status == "Invalid":
                self.recorder.complete(op, process, session_no, "fail", "write", key, value, txid, node, "Invalid")
            else:
                still.append(item)
        with self._lock:
            self.pending = still + self.pending

    def _ask(self, i: int, path: str) -> Any:
        """GET `path` on node i over the resolver's kept connection; None if it does not answer 200."""
        if not self.cluster.running(i) or i in self.cluster.paused:
            return None
        client = self._clients.get(i)
        if client is None:
            client = self._clients[i] = self.cluster.client(i, timeout=1.0)
        try:
            answer = client.call("GET", path)
        except Exception:  # noqa: BLE001 - down or unreachable: a new connection next time
            client.close()
            del self._clients[i]
            return None
        return answer.json() if answer.status == 200 else None

    def _ask_commit(self, i: int) -> int | None:
        answer = self._ask(i, "/node/commit")
        return int(str(answer["transaction_id"]).split(".")[1]) if answer else None

    def _status(self, txid: str, spread: int) -> str | None:
        for attempt in range(self.cluster.size):
            answer = self._ask((spread + attempt) % self.cluster.size, f"/app/tx?transaction_id={txid}")
            if answer is not None:
                return str(answer.get("status"))
        return None

    def stop_clients(self) -> None:
        self.stopping.set()
        for t in self._threads:
            t.join(timeout=30)

    def finish(self, seconds: float) -> None:
        """After the clients stopped: resolve what is pending for up to `seconds`, the rest becomes `info`."""
        deadline = time.monotonic() + seconds
        while self.pending and time.monotonic() < deadline:
            self.resolve_once()
            if self.pending:
                time.sleep(0.2)
        for op, process, session_no, key, value, txid, node in self.pending:
            self.recorder.complete(op, process, session_no, "info", "write", key, value, txid, node,
                                   "fate unknown at the end")
        self.pending = []


# 503s whose request was certainly not executed (the others, e.g. a forwarded write whose answer was lost, may
# have been)
NOT_EXECUTED_503 = ("PrimaryNotFound", "TooManyPendingTransactions", "RequestAlreadyForwarded",
                    "SessionCapExhausted")


def _fate_of_error(e: BaseException) -> EventType:
    """A refused connection sent nothing; any other transport error may have come after the request ran."""
    return "fail" if isinstance(e, ConnectionRefusedError) else "info"


def _fate(status: int, body: bytes) -> EventType:
    if 300 <= status < 500 or (status == 503 and _code(body) in NOT_EXECUTED_503):
        return "fail"
    return "info"


def _code(body: bytes) -> str:
    try:
        return str(orjson.loads(body)["error"]["code"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ""


def _refusal(status: int, body: bytes) -> str:
    """`HTTP 503 <CCF error code>` of an error answer."""
    return f"HTTP {status} {_code(body)}".strip()


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:200]
