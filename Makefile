# Two commands do all set-up on a fresh machine: `make demo` and `make test` (README.md).
# Expensive artefacts live outside the repository so a fresh clone (CI) reuses them:
#   pip's wheel cache (~/.cache/pip) and the Go-built control plane (~/.cache/opsmgr/testbin/<versions>).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: all venv postgres-bin testbin console-assets chromium lint test unit demo clean bench

all: test

# Wheels of the pinned dependencies, keyed by the pins, so a fresh clone installs offline from the cache.
DEPS_KEY := $(shell sed -n '/^requires = /p; /^dependencies = \[/,/^\]/p; /^dev = \[/,/^\]/p' pyproject.toml | sha256sum | cut -c1-16)
BUILD_REQUIRES := $(shell sed -n 's/^requires = \[\(.*\)\]/\1/p' pyproject.toml | tr -d '"' | tr ',' ' ')
WHEELS := $(HOME)/.cache/opsmgr/wheels/$(DEPS_KEY)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	@if [ ! -f $(WHEELS)/.complete ]; then \
	  echo "caching dependency wheels in $(WHEELS)"; \
	  $(PY) -m pip wheel --quiet --wheel-dir $(WHEELS) '.[dev]' $(BUILD_REQUIRES) \
	    && rm -f $(WHEELS)/opsmgr-*.whl && touch $(WHEELS)/.complete; \
	fi
	$(PY) -m pip install --quiet --no-index --find-links $(WHEELS) -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The PostgreSQL server binaries (initdb, pg_ctl, postgres) come from Debian when the machine lacks them.
postgres-bin:
	@if command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then :; else \
	  echo "installing Debian's postgresql (initdb/pg_ctl are missing)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null; \
	fi

# kube-apiserver, kube-controller-manager, kubectl, etcd and helm, built once per version into the cache.
testbin:
	@bash tools/testbin/build.sh >/dev/null

# The console's chart library (uPlot, pinned with its integrity in src/opsmgr/console/assets.py) from the npm
# registry into the cache (~/.cache/opsmgr/npm/uplot-<version>); never committed. npm comes from Debian when missing.
console-assets:
	@if ! command -v npm >/dev/null; then \
	  echo "installing Debian's npm (the console's chart library comes from the npm registry)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq npm >/dev/null; \
	fi
	@$(PYTHON) src/opsmgr/console/assets.py

# Debian's chromium, the browser the console's tests drive through Playwright (no `playwright install`).
chromium:
	@if command -v chromium >/dev/null; then :; else \
	  echo "installing Debian's chromium (the console's browser tests need it)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; \
	fi

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: venv postgres-bin testbin console-assets chromium lint
	@rc=0; $(PY) -m pytest -rs --durations=15 $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; that is a failure, not a pass" >&2; exit 1; fi; \
	exit $$rc

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

demo: venv postgres-bin testbin
	$(VENV)/bin/opsmgr dev demo

# Benchmarks print figures and never assert; `make test` never runs them. BENCH=full: 10,000 agents, full sizes.
BENCH ?= short
bench: venv postgres-bin testbin
	$(PY) -m bench --mode $(BENCH)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Install files derived from crds/ and the chart: the chart's CRD templates, deploy/opsmgr.yaml, argocd-cm patch.
.PHONY: manifests
manifests: venv testbin
	$(PY) tools/manifests.py --helm "$$(bash tools/testbin/build.sh | tail -n1)/helm"
