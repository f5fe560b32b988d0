# Orrery's front door. `make run`: the whole cloud in one process on embedded backends.
# `make test`: the whole suite (needs PostgreSQL and RabbitMQ on 127.0.0.1, see README).
# Works from a fresh clone with only python3 (>= 3.11) and PyPI: the venv is made here.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# Seconds one test may run before pytest-timeout fails it (fixture set-up not counted).
TEST_TIMEOUT ?= 120
PYTEST_ARGS ?=
BENCH_LOGS := var/bench

export PIP_NO_INPUT := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# Stamps live inside the venv, so a new venv reinstalls; pyproject.toml is their only input
# (the install is editable, so code changes need no reinstall).
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: help run test lint check bench clean distclean

help:
	@echo "make run    - Orrery all-in-one on embedded defaults (SQLite log, in-process bus)"
	@echo "make test   - the whole test suite (PostgreSQL + RabbitMQ on 127.0.0.1)"
	@echo "make lint   - ruff and mypy --strict"
	@echo "make check  - lint, then test"
	@echo "make bench  - every bench/*.py, each beside its raw ceiling (logs in $(BENCH_LOGS)/)"
	@echo "make clean  - caches and install stamps; make distclean also removes $(VENV)"

run: $(RUN_STAMP)
	$(BIN)/orrery up

# pytest exits 5 when it collects nothing; that fails make test like any other failure.
test: $(DEV_STAMP)
	@rc=0; $(BIN)/pytest -q --durations=15 --timeout=$(TEST_TIMEOUT) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; CI must run tests" >&2; fi; \
	exit $$rc

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

check: lint test

# Runs every bench/*.py script (a file with a __main__ guard; the rest are helpers), keeps
# going past a failure, then prints each `result ...` line and fails if any script failed.
bench: $(BENCH_STAMP)
	@shopt -s nullglob; rm -rf $(BENCH_LOGS); mkdir -p $(BENCH_LOGS); failed=(); ran=0; \
	for script in bench/*.py; do \
	  grep -q '^if __name__ == .__main__.:' "$$script" || continue; \
	  ran=1; name=$$(basename "$$script" .py); echo "== $$script"; \
	  $(BIN)/python "$$script" 2>&1 | tee "$(BENCH_LOGS)/$$name.log" || failed+=("$$script"); \
	done; \
	if [ $$ran -eq 0 ]; then echo "make bench: no bench/*.py yet"; exit 0; fi; \
	echo "== results"; grep -h '^result ' $(BENCH_LOGS)/*.log || true; \
	if [ $${#failed[@]} -gt 0 ]; then echo "make bench: failed: $${failed[*]}" >&2; exit 1; fi

$(RUN_STAMP): pyproject.toml | $(BIN)/pip
	$(PIP) install -e '.[fast]'
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/pip
	$(PIP) install -e '.[dev,fast,libvirt,e2e]'
	touch $@

$(BENCH_STAMP): pyproject.toml | $(BIN)/pip
	$(PIP) install -e '.[fast,bench]'
	touch $@

# The venv. Debian without python3-venv has no ensurepip: then the venv is made without
# pip and pip is bootstrapped from its wheel on PyPI (checked against PyPI's sha256).
$(BIN)/pip:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "make: $(PYTHON) must be Python >= 3.11 (try: make PYTHON=python3.11 ...)" >&2; \
	    exit 1; }
	$(PYTHON) -m venv --clear $(VENV) || { \
	  echo "make: venv without ensurepip; bootstrapping pip from PyPI" >&2; \
	  $(PYTHON) -m venv --clear --without-pip $(VENV) && \
	  $(BIN)/python -c "$$BOOTSTRAP_PIP"; }
	$(PIP) install --upgrade pip
	@test -x $@

define BOOTSTRAP_PIP
import hashlib, json, os, subprocess, sys, tempfile, urllib.parse, urllib.request
index = "https://pypi.org/pypi/pip/json"
with urllib.request.urlopen(index, timeout=60) as resp:
    meta = json.load(resp)
wheel = next(u for u in meta["urls"] if u["packagetype"] == "bdist_wheel")
with urllib.request.urlopen(urllib.parse.urljoin(index, wheel["url"]), timeout=120) as resp:
    body = resp.read()
if hashlib.sha256(body).hexdigest() != wheel["digests"]["sha256"]:
    sys.exit("pip wheel from PyPI failed its sha256 check")
path = os.path.join(tempfile.mkdtemp(), wheel["filename"])
with open(path, "wb") as fh:
    fh.write(body)
subprocess.check_call([sys.executable, path + "/pip", "install", "--no-index", path])
endef
export BOOTSTRAP_PIP

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache $(RUN_STAMP) $(DEV_STAMP) $(BENCH_STAMP)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
