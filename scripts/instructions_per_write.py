"""Instructions a logging write costs an in-process node, counted by valgrind (timings on a shared machine wander by
a third; instruction counts repeat to a fraction of a percent).

    .venv/bin/python scripts/instructions_per_write.py py        # the Python logging app
    .venv/bin/python scripts/instructions_per_write.py js        # the JS logging app (built by npm on first use)
    .venv/bin/python scripts/instructions_per_write.py js-worker # the same, as a node runs it: the loop's share only

It runs an in-process node (`tests.network.node_harness.Node`) under `valgrind --tool=cachegrind` twice, for
`--few` and `--many` writes of new ids, and prints the difference per write, so start-up cancels out. RSA keys are
loaded rather than generated: generating one costs a random number of instructions. Needs valgrind.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IN_FLIGHT = 256  # deferred writes answered together (as the benchmark's 32 connections x 8 keep in flight)


def run_writes(kind: str, count: int, key_file: str) -> None:
    """The measured program: a node, 200 writes to warm it, then `count` writes of new ids."""
    sys.path.insert(0, str(ROOT))
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = Path(key_file).read_bytes()
    rsa.generate_private_key = lambda *a, **k: serialization.load_pem_private_key(pem, None)  # type: ignore[assignment]
    from tests.network.node_harness import Node

    directory = Path(tempfile.mkdtemp(prefix="instructions_"))
    try:
        if kind == "js-worker":
            from tests.app.test_js_bundles import js_node

            deferred_writes(js_node(directory, "logging"), count)
            return
        if kind == "js":
            from tests.app.test_js_bundles import js_node

            node = js_node(directory, "logging")
        else:
            from app.logging import app

            node = Node(str(directory), application=app)
            node.open_service()
        for i in range(200):
            node.user_call("POST", "/app/log/private", {"id": 10**9 + i, "msg": "warm up"})
        for i in range(count):
            node.user_call("POST", "/app/log/private", {"id": i, "msg": f"hello world {i}"})
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def deferred_writes(node: Any, count: int) -> None:
    """The writes as a node's loop makes them: answered `Pending` while the handler runs in the bundle's worker
    process, `IN_FLIGHT` at a time (valgrind counts this process only: the loop's share of each write)."""
    import asyncio

    import orjson

    from network.enclave.http import Pending, Request

    node.enclave.may_defer = True

    async def write(ids: range, message: str) -> None:
        for start in range(ids.start, ids.stop, IN_FLIGHT):
            answers = [node.enclave.handle(Request("POST", "/app/log/private", {}, orjson.dumps(
                {"id": i, "msg": message.format(i)}), node.user_der)) for i in range(start, min(start + IN_FLIGHT,
                                                                                                  ids.stop))]
            for answer in answers:
                assert isinstance(answer, Pending), answer
                assert (await answer.wait()).status == 200

    async def main() -> None:
        await write(range(10**9, 10**9 + 200), "warm up")
        await write(range(count), "hello world {}")

    asyncio.run(main())


def instructions(kind: str, count: int, key_file: str) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null", sys.executable,
         __file__, "--child", kind, str(count), key_file],
        capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"}, check=True)
    match = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if match is None:
        raise SystemExit(f"valgrind printed no instruction count:\n{out.stderr[-2000:]}")
    return int(match.group(1).replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        run_writes(argv[1], int(argv[2]), argv[3])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("py", "js", "js-worker"),
                        help="the Python or the JS logging app (js-worker: as a node runs it, the loop's share)")
    parser.add_argument("--few", type=int, default=500, help="writes of the first, subtracted run")
    parser.add_argument("--many", type=int, default=2500, help="writes of the second run (more than --few)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("instructions_per_write: valgrind is not installed", file=sys.stderr)
        return 2
    if args.many <= args.few:
        print("instructions_per_write: --many must be above --few", file=sys.stderr)
        return 2
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with tempfile.NamedTemporaryFile(suffix=".pem") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
        f.flush()
        few, many = instructions(args.kind, args.few, f.name), instructions(args.kind, args.many, f.name)
    print(f"{args.kind}: {(many - few) // (args.many - args.few)} instructions per write "
          f"({args.few} writes: {few}, {args.many} writes: {many})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
