# The two commands of the README: `make demo` (set up, build a real index, serve) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# FAISS=gpu swaps faiss-cpu (a core dependency) for faiss-gpu after the install (never both).
FAISS ?= cpu
FAISS_GPU ?= faiss-gpu==1.15.1

.PHONY: setup test test-fast test-e2e lint demo serve clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch/torchvision first, pinned: on the project machines they install from local disk.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	if [ "$(FAISS)" = gpu ]; then $(BIN)/pip uninstall -q -y faiss-cpu && $(BIN)/pip install -q '$(FAISS_GPU)'; fi
	touch $@

setup: $(VENV)/.installed

# ruff, mypy and the layering contracts of DESIGN.md (import-linter, [tool.importlinter] in pyproject.toml).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# What CI runs: ruff, mypy and every test (the end-to-end tier trains the tiny encoder once, drives
# Debian's Chromium when it is installed, SIGKILLs publishers and workers).
test: setup lint
	$(BIN)/pytest -q

# The fast tier alone (no trained encoder, no browser): a minute or two.
test-fast: setup
	$(BIN)/pytest -q -m "not e2e"

# The end-to-end tier alone.
test-e2e: setup
	$(BIN)/pytest -q -m e2e

# Load test (not part of `make test`): CLIENTS clients for DURATION seconds against a server on a
# data home it builds, with re-index jobs running; prints p50/p99 and fails on any error.
CLIENTS ?= 50
DURATION ?= 60
.PHONY: load-test
load-test: setup
	$(BIN)/python -m bench.load_test --clients $(CLIENTS) --duration $(DURATION)

demo: setup
	$(BIN)/biomedsearch demo

serve: setup
	$(BIN)/biomedsearch serve

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Benchmarks of every stage beside the alternatives (issue 9): long; `make bench ARGS=--quick` to check.
bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	nice -n 10 $(BIN)/python -m bench $(ARGS)
