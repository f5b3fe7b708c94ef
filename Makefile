# qpxd — two commands: `make run` (qpxd on etc/qpx.yaml) and `make test`.
# Both create .venv and install what they need; `make test` also installs the system
# packages the tests use (apt, as root, only when missing).

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml 2>/dev/null | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: help run test lint soak bench check install system-deps irq-plan clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	  || { echo "qpxd needs Python >= 3.11 (found: $$($(PYTHON) --version 2>&1))" >&2; exit 1; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  rm -rf $(VENV); echo "python venv support missing: installing python3-venv" >&2; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv \
	    "$$(basename $$(readlink -f $(PYTHON)))-venv" >/dev/null 2>&1 \
	    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; \
	  $(PYTHON) -m venv $(VENV); }

$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## create .venv and install qpxd (editable) with the test tools

run: install ## run qpxd in the foreground on the embedded default config (etc/qpx.yaml)
	exec $(VENV)/bin/qpxd -c etc/qpx.yaml

check: install ## validate etc/qpx.yaml and every example
	@for f in etc/qpx.yaml etc/examples/*.yaml; do printf '%s: ' "$$f"; $(VENV)/bin/qpxd check -c $$f || exit 1; done

system-deps: ## install the system packages the tests use (root + apt; skips what is present)
	@scripts/system-deps test

lint: install ## ruff: lint and import order (config in pyproject.toml)
	$(VENV)/bin/ruff check qpx test bench

test: install system-deps lint ## ruff, then the test suite (bounded: soak/load tests excluded)
	$(PY) -m pytest $(PYTEST_ARGS)

soak: install system-deps ## the long soak and load tests
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: install ## benchmarks against real peers; writes docs/benchmarks.md
	@scripts/system-deps bench
	$(PY) bench/run.py

IRQ_PLAN_PY ?= python3
irq-plan: ## NIC IRQ affinity plan: make irq-plan IFACE=eth0 [CPUS=0-15] [APPLY=1]
	@if [ -z "$(IFACE)" ]; then echo "irq-plan: IFACE is required: make irq-plan IFACE=eth0 [CPUS=0-15] [APPLY=1]" >&2; exit 2; fi
	$(IRQ_PLAN_PY) contrib/irq/irq-affinity-plan --iface $(IFACE)$(if $(CPUS), --cpus $(CPUS))$(if $(filter 1,$(APPLY)), --apply)

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
