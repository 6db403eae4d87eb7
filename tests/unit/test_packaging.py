"""What installing the project gives: console commands, and a client library that stands without the node."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

COMMANDS = ["pyccf-node", "pyccf-sandbox", "pyccf-member", "pyccf-audit"]


@pytest.mark.parametrize("command", COMMANDS)
def test_installing_the_project_gives_each_command(command: str) -> None:
    path = Path(sys.executable).parent / command
    assert path.exists(), f"{command} is not installed next to {sys.executable}: run `make venv`"
    result = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {command} ")


def test_the_client_library_loads_nothing_of_the_node() -> None:
    """An auditor or application client imports the client and the verification code only: no host, enclave
    or consensus module, no HTTP server parser, event loop or JavaScript engine."""
    code = ("import sys, network.client.service, network.client.member_api; "
            "print('\\n'.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                timeout=60).stdout.split())
    assert "network.client.service" in loaded
    node_parts = {m for m in loaded if m.startswith(("network.host", "network.enclave", "network.consensus",
                                                       "network.boundary", "httptools", "uvloop", "quickjs"))}
    node_parts |= loaded & {"network.node", "ledger.service_ledger", "ledger.files", "governance.js_runtime"}
    assert node_parts == set()
