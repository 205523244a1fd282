# hroute developer tasks. `make dev` once, then `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= etc/hroute/hroute.yaml
HROUTE_CACHE ?= $(HOME)/.cache/hroute

.PHONY: dev test test-fast run lint bench bench-supervise bench-hermes llama-server hermes-venv clean install uninstall deb

dev: $(VENV)/.installed ## set up a virtualenv with hroute and its test tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

test: dev ## the whole suite, as CI runs it; the 25 slowest tests are listed at the end
	$(PY) -m pytest --durations=25

test-fast: dev ## the loop to run while coding: unit tests and the in-process daemon (< 20 s)
	$(PY) -m pytest tests/unit tests/middle -q

run: dev ## the daemon in the foreground on the example config, socket under $XDG_RUNTIME_DIR or /run
	$(VENV)/bin/hroute run --config $(CONFIG)

lint: dev
	$(VENV)/bin/ruff check src tests bench

bench: dev ## the hot path, the socket, the idle daemon, fleets, reload and hostile load; figures go to docs/benchmarks.md by hand
	$(PY) -m bench.bench_usable
	$(PY) -m bench.bench_storm
	$(PY) -m bench.bench_core
	$(PY) -m bench.bench_http
	$(PY) -m bench.bench_fleet
	$(PY) -m bench.bench_reload
	$(PY) -m bench.bench_hostile
	$(PY) -m bench.bench_cluster
	$(PY) -m bench.bench_resync

bench-supervise: dev ## supervision with a real llama-server (builds it once: see llama-server)
	HROUTE_LLAMA_SERVER="$$(HROUTE_CACHE=$(HROUTE_CACHE) scripts/build-llama-server.sh)" \
		$(PY) -m bench.bench_supervise

llama-server: ## build llama-server once into $(HROUTE_CACHE) (about 10 minutes on 2 cores)
	HROUTE_CACHE=$(HROUTE_CACHE) scripts/build-llama-server.sh

hermes-venv: ## one venv per Hermes release in scripts/hermes-versions, with this hroute (once: 1-2 minutes each)
	grep -v '^#' scripts/hermes-versions | while read -r package version; do \
		[ -n "$$package" ] || continue; \
		HROUTE_CACHE=$(HROUTE_CACHE) HROUTE_HERMES_PACKAGE=$$package HROUTE_HERMES_VERSION=$$version \
			scripts/hermes-venv.sh >/dev/null || exit 1; \
	done

bench-hermes: dev hermes-venv ## the Hermes plugin benchmark on every tested release (about 6 minutes)
	$(PY) bench/bench_hermes_plugin.py

# System install: a virtualenv of wheels on /usr/bin/python3 in $(PREFIX)/lib/hroute, the
# `hroute` command, units, sysusers.d, journal catalog; /etc/hroute/hroute.yaml is never
# overwritten. packaging/install.sh says which other directories can be moved.
PREFIX ?= /usr/local
DESTDIR ?=

install: ## install system-wide (honours DESTDIR and PREFIX); needs PyPI or PIP_ARGS wheels
	DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" packaging/install.sh install

uninstall: ## remove what `make install` put in place (keeps a changed config, the user, state)
	DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" packaging/install.sh uninstall

deb: ## build dist/hroute_<version>_<arch>.deb (dpkg-deb; carries its own virtualenv)
	OUT=dist packaging/deb.sh

clean:
	rm -rf $(VENV) build dist src/*.egg-info
