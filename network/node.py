"""A node: its host and its enclave, joined through `network.boundary` (see docs/architecture.md).

`python -m network.node --config node.json` (or `pyccf-node --config node.json`) runs a node in virtual
mode. This module is the only one that knows both sides: it builds the host (`network.host`) and the enclave
(`network.enclave`) and lets each call the other through the boundary's calls only.

How the node starts depends on its data directory and configuration:
- sealed secrets in the data directory: it resumes that service (unseal, replay and verify the ledger files,
  drop any unsigned suffix, continue in a new view with a signature);
- a `recover` section: it starts a new service from a lost one's ledger (disaster recovery);
- a `join` section: it joins a running service, and is trusted by the service's members or its opening;
- a `start` section: it starts a new service (identities, genesis, the service certificate written to
  `service_certificate_file`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from loguru import logger

from network.enclave.runtime import EnclaveRuntime
from network.host.config import ConfigError, load_config
from network.host.enclave_process import EnclaveProcess
from network.host.node import NodeFailed, NodeHost, NodeStartError
from network.logs import configure_logging

ENCLAVE_PROCESS_VARIABLE = "PYCCF_ENCLAVE_PROCESS"


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyccf-node", description="Run a node in virtual mode.")
    parser.add_argument("--config", required=True, help="the node's JSON configuration")
    parser.add_argument("--enclave-process", action="store_true",
                        default=os.environ.get(ENCLAVE_PROCESS_VARIABLE, "") not in ("", "0"),
                        help="run the enclave in its own process behind the boundary (default: in this process; "
                             f"{ENCLAVE_PROCESS_VARIABLE}=1 sets it for every node started from this environment)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    configure_logging(config.log.format, config.log.level)
    _use_uvloop()
    host = NodeHost(config)
    if args.enclave_process:
        host.attach(EnclaveProcess(host, config.log.format, config.log.level))
    else:
        host.attach(EnclaveRuntime(host))
    try:
        asyncio.run(host.run())
    except (NodeStartError, NodeFailed, ConfigError) as e:
        logger.error(str(e))
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
