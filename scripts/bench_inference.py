#!/usr/bin/env python3
"""Confidential inference speed (issue 13): a one-node service serving `app.inference`, against bare onnxruntime.

It builds an MLP with `onnx.helper` (`--width`, three dense layers with ReLU) and runs batches of `--batch`
rows, so that one inference takes a millisecond or more. It starts a fresh one-node service on the app, uploads
the model as user0 and approves it as member0, then sends `--requests` inferences over `--connections` TLS
connections, one request in flight on each (each inference a committed write with its claims). In the same
process it then runs the same inputs through an onnxruntime session of the same model, one at a time, with the
node's options (one thread). Prints one JSON object: inferences/s and p50/p99 latency for both, the ratio (the
framework's cost), and this process's CPU use while loading the node (a saturated client makes the figure
meaningless).

Usage: `.venv/bin/python scripts/bench_inference.py [--width 1024] [--batch 32] [--requests 500] [--connections 1]`
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time

import numpy as np
import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from network.client.connection import ServiceClient  # noqa: E402
from scripts.sandbox import _member0, app_settings, make_identities, node_config, open_service, start_node  # noqa: E402
from scripts.sandbox_guide import INFERENCE_APP  # noqa: E402


def mlp(width: int, seed: int = 1) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    dims = [(64, width), (width, width), (width, 8)]
    nodes, weights, last = [], [], "x"
    for i, (a, b) in enumerate(dims):
        weights += [numpy_helper.from_array((rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32), f"W{i}"),
                    numpy_helper.from_array(np.zeros(b, dtype=np.float32), f"B{i}")]
        nodes.append(helper.make_node("Gemm", [last, f"W{i}", f"B{i}"], [f"h{i}"]))
        last = f"h{i}"
        if i < len(dims) - 1:
            nodes.append(helper.make_node("Relu", [last], [f"r{i}"]))
            last = f"r{i}"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stats(latencies: list[float], elapsed: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"per_s": round(len(latencies) / elapsed, 1), "p50_ms": round(1000 * ordered[len(ordered) // 2], 3),
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Confidential inference speed against bare onnxruntime.")
    parser.add_argument("--width", type=int, default=1024, help="the MLP's hidden width")
    parser.add_argument("--batch", type=int, default=32, help="rows per inference (each request runs one batch)")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--connections", type=int, default=1,
                        help="clients sending at once, one request in flight each (the node runs one at a time; "
                             "with more, signatures cover several inferences)")
    args = parser.parse_args(argv)
    model = mlp(args.width)
    rng = np.random.default_rng(2)
    inputs = [rng.normal(size=(args.batch, 64)).astype(np.float32) for _ in range(args.requests)]
    bodies = [orjson.dumps({"inputs": {"x": x.tolist()}}) for x in inputs]
    workspace = tempfile.mkdtemp(prefix="bench-inference-")
    common = os.path.join(workspace, "sandbox_common")
    make_identities(common)
    port = _free_port()
    process = start_node(node_config(workspace, port, app=INFERENCE_APP, log={"level": "WARNING"},
                                     **app_settings(INFERENCE_APP)))[0]
    try:
        url = f"https://127.0.0.1:{port}"
        open_service(url, common)
        user = ServiceClient(url, os.path.join(common, "service_cert.pem"), cert=os.path.join(common, "user0_cert.pem"),
                             key=os.path.join(common, "user0_privk.pem"))
        uploaded = user.json_ok("PUT", "/app/models/mlp", model, content_type="application/octet-stream")
        member = _member0(url, common)
        proposal = member.propose([{"name": "approve_model", "args": {"name": "mlp", "digest": uploaded["digest"]}}])
        if proposal["proposalState"] == "Open":
            member.vote(proposal["proposalId"])
        for body in bodies[:20]:  # warm-up: the session is loaded, connections are up
            user.json_ok("POST", "/app/models/mlp:infer", body)
        clients = [user] + [ServiceClient(url, os.path.join(common, "service_cert.pem"),
                                          cert=os.path.join(common, "user0_cert.pem"),
                                          key=os.path.join(common, "user0_privk.pem"))
                            for _ in range(args.connections - 1)]
        latencies: list[float] = []
        lock = threading.Lock()

        def send(client: ServiceClient, share: list[bytes]) -> None:
            for body in share:
                t = time.perf_counter()
                answer = client.call("POST", "/app/models/mlp:infer", body)
                with lock:
                    latencies.append(time.perf_counter() - t)
                assert answer.status == 200, answer.body

        threads = [threading.Thread(target=send, args=(c, bodies[i::args.connections]))
                   for i, c in enumerate(clients)]
        cpu, began = time.process_time(), time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - began
        client_cpu = 100 * (time.process_time() - cpu) / elapsed
        node = _stats(latencies, elapsed)
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(workspace, ignore_errors=True)
    from app.inference import _load

    session = _load(model)
    for x in inputs[:20]:
        session.run(None, {"x": x})
    bare_latencies = []
    began = time.perf_counter()
    for x in inputs:
        t = time.perf_counter()
        session.run(None, {"x": x})
        bare_latencies.append(time.perf_counter() - t)
    bare = _stats(bare_latencies, time.perf_counter() - began)
    print(json.dumps({"width": args.width, "batch": args.batch, "requests": args.requests,
                      "connections": args.connections, "model_bytes": len(model),
                      "node_inferences_per_s": node["per_s"], "node_p50_ms": node["p50_ms"],
                      "node_p99_ms": node["p99_ms"], "bare_inferences_per_s": bare["per_s"],
                      "bare_p50_ms": bare["p50_ms"], "bare_p99_ms": bare["p99_ms"],
                      "ratio": round(node["per_s"] / bare["per_s"], 3), "client_cpu_pct": round(client_cpu, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
