#!/usr/bin/env python3
"""What a loopback write costs the writer, written one at a time between pieces of work or all together.

A uvloop transport's `write` to an idle socket is a system call made at once, and on loopback it also wakes the
process at the other end. Here one process (the node's side, uvloop) writes 200 bytes to each of `--connections`
connections read by one other process (a client waiting on all of them with epoll, like a load generator), each
round either interleaved with `--work-us` of busy work before each write (as a node answers a request as soon as
it handled it) or after all the work (as a node that writes its answers at the end of the loop's turn). It prints
the mean time spent inside `write` per write, for alternating rounds of both.

Usage: `.venv/bin/python scripts/bench_send_burst.py [--connections 32] [--work-us 20] [--rounds 100]`
"""

from __future__ import annotations

import argparse
import asyncio
import os
import selectors
import socket
import time

import uvloop


def _busy(us: float) -> None:
    end = time.perf_counter() + us / 1e6
    while time.perf_counter() < end:
        pass


def _reader(listener: socket.socket, connections: int) -> None:
    sel = selectors.DefaultSelector()
    for _ in range(connections):
        conn, _ = listener.accept()
        conn.setblocking(False)
        sel.register(conn, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if not key.fileobj.recv(65536):  # type: ignore[union-attr]
                os._exit(0)


async def _measure(args: argparse.Namespace) -> dict[str, list[float]]:
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(args.connections)
    pid = os.fork()
    if pid == 0:  # the reader: never back into the parent's code, whatever happens
        try:
            _reader(listener, args.connections)
        finally:
            os._exit(0)
    transports = []
    for _ in range(args.connections):
        transport, _ = await loop.create_connection(asyncio.Protocol, *listener.getsockname())
        transports.append(transport)
    await asyncio.sleep(0.2)
    data = b"x" * 200
    results: dict[str, list[float]] = {"interleaved": [], "burst": []}
    try:
        for _ in range(2):
            for mode, spent_per_write in results.items():
                spent = 0.0
                for _ in range(args.rounds):
                    await asyncio.sleep(0.002)  # the reader goes back to waiting
                    if mode == "burst":
                        for _ in transports:
                            _busy(args.work_us)
                    for transport in transports:
                        if mode == "interleaved":
                            _busy(args.work_us)
                        start = time.perf_counter()
                        transport.write(data)
                        spent += time.perf_counter() - start
                spent_per_write.append(round(spent / (args.rounds * len(transports)) * 1e6, 1))
    finally:
        for transport in transports:
            transport.close()
        await asyncio.sleep(0.1)
        os.waitpid(pid, 0)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--work-us", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    results = uvloop.run(_measure(args))
    print({f"{mode}_us_per_write": figures for mode, figures in results.items()})


if __name__ == "__main__":
    main()
