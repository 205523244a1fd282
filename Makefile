# hroute developer tasks. `make dev` once, then `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= etc/hroute/hroute.yaml
HROUTE_CACHE ?= $(HOME)/.cache/hroute

.PHONY: dev test test-fast run lint bench llama-server clean

dev: $(VENV)/.installed ## set up a virtualenv with hroute and its test tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

test: dev ## the whole suite, as CI runs it
	$(PY) -m pytest

test-fast: dev ## unit tests only
	$(PY) -m pytest tests/unit -q

run: dev ## the daemon in the foreground on the example config, socket under $XDG_RUNTIME_DIR or /run
	$(VENV)/bin/hroute run --config $(CONFIG)

lint: dev
	$(VENV)/bin/ruff check src tests bench

bench: dev ## benchmarks; figures go to docs/benchmarks.md by hand
	$(PY) bench/bench_usable.py

llama-server: ## build llama-server once into $(HROUTE_CACHE) (about 10 minutes on 2 cores)
	HROUTE_CACHE=$(HROUTE_CACHE) scripts/build-llama-server.sh

clean:
	rm -rf $(VENV) build dist src/*.egg-info
