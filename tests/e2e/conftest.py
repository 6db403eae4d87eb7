"""Fixtures for the end-to-end tests: one sandbox (a real node process) per test module.

Each sandbox lives in a workspace made by `tmp_path_factory`, printed when it is made; it is never deleted by
these fixtures, so after a failure the node's logs (`sandbox_0/out`, `sandbox_0/err`), configuration and ledger
are still there, and every failing test's report names the workspace and shows the tail of the node's log.
At the end of the module every node still running gets SIGTERM and must exit 0.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

from tests.e2e.harness import Sandbox

# the sandboxes of the module running now, for failure reports
_active: dict[str, list[Sandbox]] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.failed:
        for sandbox in _active.get(item.nodeid.split("::")[0], []):
            report.sections.append((
                "e2e sandbox",
                f"workspace kept at {sandbox.workspace} (node logs in sandbox_0/out and sandbox_0/err)\n"
                f"--- tail of {sandbox.node_dir / 'err'}:\n{sandbox.log_tail()}",
            ))
    return report


SandboxFactory = Callable[..., Sandbox]


@pytest.fixture(scope="module")
def sandbox_factory(request: pytest.FixtureRequest,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxFactory]:
    """Make sandboxes (not started) for this module: `make(name, **node_config_overrides)`."""
    module = request.node.nodeid
    made: list[Sandbox] = []
    _active[module] = made

    def make(name: str = "sandbox", **config: Any) -> Sandbox:
        short = request.node.name.removesuffix(".py").removeprefix("test_")
        workspace = tmp_path_factory.mktemp(f"e2e-{short}-{name}", numbered=True)
        print(f"\n[e2e] {module}: {name} workspace {workspace}", flush=True)
        sandbox = Sandbox(workspace, **config)
        made.append(sandbox)
        return sandbox

    yield make
    failed: dict[str, object] = {}
    for sandbox in made:
        if sandbox.process is None:
            continue
        try:
            code = sandbox.stop()
        except AssertionError as e:
            failed[str(sandbox.workspace)] = str(e)
        else:
            if code != 0:
                failed[str(sandbox.workspace)] = code
    _active.pop(module, None)
    assert not failed, f"nodes did not exit 0 on SIGTERM (exit codes by workspace, kept): {failed}"


@pytest.fixture(scope="module")
def sandbox(sandbox_factory: SandboxFactory) -> Sandbox:
    """A started node whose service is open (member0 active, user0 a user), as `make sandbox` leaves it."""
    made = sandbox_factory()
    made.start()
    made.open()
    return made
