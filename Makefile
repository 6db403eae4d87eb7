# Every target creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)

# Compiled bytecode is kept under .venv (never in the tree), even where the environment asks Python not to write
# it (PYTHONDONTWRITEBYTECODE): otherwise every node, script and worker a test starts compiles the project's
# modules from source again, about 0.15 s of CPU each.
export PYTHONDONTWRITEBYTECODE :=
export PYTHONPYCACHEPREFIX := $(CURDIR)/$(VENV)/pycache

.PHONY: test test-enclave-process test-slow test-all lint bench venv clean sandbox chaos

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev,bench]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

venv: $(STAMP)

# Everything but the slow runs, then the end-to-end suite again with every node's enclave in its own process
# (the longest end-to-end tests, whose subject does not depend on where the enclave runs, only there).
test: $(STAMP)
	PYCCF_REQUIRE_JS_BUNDLES=1 $(PY) -m pytest -m "not slow and not enclave_process_pass" $(PYTEST_ARGS)
	PYCCF_REQUIRE_JS_BUNDLES=1 PYCCF_ENCLAVE_PROCESS=1 $(PY) -m pytest -m "e2e and not slow" $(PYTEST_ARGS)

test-enclave-process: $(STAMP)
	PYCCF_REQUIRE_JS_BUNDLES=1 PYCCF_ENCLAVE_PROCESS=1 $(PY) -m pytest -m "e2e and not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow --hypothesis-profile=thorough $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check ledger governance network app tests scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# One node at https://127.0.0.1:8000 (workspace/), or every node the workspace's service has; NODES=3 for three
# (8000-8002: a new service, or the workspace's grown); CLEAN=1 starts a new service; RECOVER=1 recovers the
# stopped service of workspace/ into new nodes (disaster recovery); APP=app.inference:app serves confidential
# inference instead of the logging app. SANDBOX_ARGS passes more (--port, --workspace).
sandbox: $(STAMP)
	$(PY) scripts/sandbox.py $(if $(CLEAN),--clean,) $(if $(NODES),--nodes $(NODES),) $(if $(RECOVER),--recover,) $(if $(APP),--app $(APP),) $(SANDBOX_ARGS)

# A chaos run (scripts/chaos.py): a fresh network under load and seeded faults for CHAOS_SECONDS (default 180),
# then the history checked against the ledgers; NODES=5 for five nodes, SEED=N to repeat a run.
chaos: $(STAMP)
	$(PY) scripts/chaos.py --seconds $(or $(CHAOS_SECONDS),180) --nodes $(or $(NODES),3) $(if $(SEED),--seed $(SEED),)

bench: $(STAMP)
	$(PY) scripts/bench_ledger.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache
