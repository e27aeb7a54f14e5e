# jobmill: developer and CI entry points. `make help` lists the targets.
#
#   make install                     .venv with jobmill + dev tools (fast when already done)
#   make run [HOST=...] [PORT=...]   serve the example job types
#   make test [PYTEST_ARGS=...]      ruff, mypy, pytest
#   make bench                       every bench/bench_*.py
#   make services-up / services-down real Slurm, PostgreSQL, HTCondor (root, Debian 12; see scripts/services)
#   make test-condor [PYTEST_ARGS=...] the HTCondor tests, as user jobmill (root; scripts/condor-tests.sh)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SERVICES := scripts/services
HOST ?=
PORT ?=
PYTEST_ARGS ?=

.PHONY: help install run test lint typecheck pytest bench services-up services-down services-smoke clean distclean
.PHONY: test-condor

help:
	@echo "jobmill make targets:"
	echo "  install        create $(VENV) with $(PYTHON) (>= 3.11) and pip install -e '.[dev]'"
	echo "  run            $(BIN)/jobmill serve --jobtypes examples/jobtypes  (HOST=..., PORT=...)"
	echo "  test           ruff check, mypy, pytest -q  (PYTEST_ARGS=...; all three run, exit 1 if any fails)"
	echo "  lint | typecheck | pytest   one of the three"
	echo "  test-condor    the HTCondor tests as user jobmill, in their own venv (root; needs services-up)"
	echo "  bench          run every bench/bench_*.py"
	echo "  services-up    install + start Slurm, PostgreSQL (127.0.0.1:5433), HTCondor  (root, Debian 12)"
	echo "  services-smoke check the running services  (root)"
	echo "  services-down  stop them  (root)"
	echo "  clean          remove caches and build output;  distclean: also $(VENV)"

# ---- virtualenv ---------------------------------------------------------------------------------
install: $(STAMP)

# Re-run pip only when pyproject.toml changes (or the stamp is missing).
$(STAMP): pyproject.toml
	@if ! command -v $(PYTHON) >/dev/null; then
	  echo "make install: '$(PYTHON)' not found; install Python >= 3.11 or pass PYTHON=/path/to/python3" >&2; exit 1
	fi
	if ! $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
	  echo "make install: jobmill needs Python >= 3.11, '$(PYTHON)' is $$($(PYTHON) -V 2>&1); pass PYTHON=python3.11 (or newer)" >&2; exit 1
	fi
	if [ ! -x $(BIN)/python ] || ! $(BIN)/python -m pip --version >/dev/null 2>&1; then
	  rm -rf $(VENV)   # missing or half made (e.g. a venv without pip)
	  echo "make install: creating $(VENV) with $$($(PYTHON) -V 2>&1)"
	  if ! $(PYTHON) -m venv $(VENV); then
	    rm -rf $(VENV)
	    # Debian/Ubuntu ship venv/ensurepip separately, in python3-venv.
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	      echo "make install: '$(PYTHON) -m venv' failed; installing python3-venv with apt-get and retrying"
	      DEBIAN_FRONTEND=noninteractive apt-get update -qq
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
	      $(PYTHON) -m venv $(VENV)
	    else
	      echo "make install: '$(PYTHON) -m venv' failed. On Debian/Ubuntu install the venv module:" >&2
	      echo "    sudo apt-get install python3-venv      (then run make install again)" >&2
	      exit 1
	    fi
	  fi
	fi
	PIP_DISABLE_PIP_VERSION_CHECK=1 $(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)
	echo "make install: $(VENV) ready ($$($(BIN)/python -V))"

# ---- run ----------------------------------------------------------------------------------------
run: install
	exec $(BIN)/jobmill serve --jobtypes examples/jobtypes $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

# ---- checks -------------------------------------------------------------------------------------
# All three steps always run, so one CI log shows every problem; the target fails if any step failed.
test: install
	@failed=()
	echo "== ruff check src tests bench"
	$(BIN)/ruff check src tests bench || failed+=(ruff)
	echo "== mypy"
	$(BIN)/mypy || failed+=(mypy)
	echo "== pytest -q $(PYTEST_ARGS)"
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) || failed+=(pytest)
	if [ $${#failed[@]} -gt 0 ]; then echo "make test: FAILED: $${failed[*]}" >&2; exit 1; fi
	echo "make test: ruff, mypy and pytest passed"

lint: install
	$(BIN)/ruff check src tests bench

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# ---- benchmarks ---------------------------------------------------------------------------------
bench: install
	@shopt -s nullglob
	files=(bench/bench_*.py)
	if [ $${#files[@]} = 0 ]; then echo "make bench: no bench/bench_*.py" >&2; exit 1; fi
	failed=()
	for f in "$${files[@]}"; do
	  echo "== $$f"
	  $(BIN)/python "$$f" || failed+=("$$f")
	  echo
	done
	if [ $${#failed[@]} -gt 0 ]; then echo "make bench: FAILED: $${failed[*]}" >&2; exit 1; fi

# ---- services (root only; Debian 12; see scripts/services/README.md) ----------------------------
# JOBMILL_SERVICES="postgres" (or any of: slurm postgres condor) starts only those.
define need_root
	if [ "$$(id -u)" != 0 ]; then
	  echo "make $@: the service scripts must run as root (they install packages and start daemons); try: sudo make $@" >&2
	  exit 1
	fi
endef

services-up:
	@$(need_root)
	bash $(SERVICES)/install-services.sh
	bash $(SERVICES)/start-services.sh

services-smoke:
	@$(need_root)
	bash $(SERVICES)/smoke-services.sh

services-down:
	@$(need_root)
	bash $(SERVICES)/stop-services.sh

# HTCondor refuses root-owned jobs: its tests skip in `make test` (root) and run here as jobmill.
test-condor:
	@$(need_root)
	bash scripts/condor-tests.sh $(PYTEST_ARGS)

# ---- cleaning -----------------------------------------------------------------------------------
clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache src/*.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
