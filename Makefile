# hybridkv: `make run` and `make test` work from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
DEPS_STAMP := $(VENV)/.deps-stamp
PY_PATHS := $(wildcard python tests benches scripts)
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: all venv build lint fmt test test-rust test-py run bench clean redis

all: build

venv: $(DEPS_STAMP)

$(DEPS_STAMP): requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# Builds the Rust extension in release mode into the venv (editable Python sources).
build: venv
	$(BIN)/maturin develop --release --quiet

lint: venv
	$(PY) scripts/check_imports.py
	$(BIN)/ruff check $(PY_PATHS)
	$(BIN)/ruff format --check $(PY_PATHS)
	$(BIN)/mypy
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings

fmt: venv
	$(BIN)/ruff format $(PY_PATHS)
	$(BIN)/ruff check --fix $(PY_PATHS)
	cargo fmt --all

# The remote offload tier is tested against a real redis-server.
redis:
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }

test-rust:
	cargo test -p hybridkv-core --quiet

test-py: build redis
	$(BIN)/pytest -q

test: build lint test-rust test-py

# The bundled default: Qwen3-Next-80B-A3B (12 full-attention + 36 gated-delta-net
# layers) with 16 GiB of KV cache, planned, then serving the bundled agentic trace on
# every layout side by side (elastic: hybridkv's default, one arena at natural page
# sizes; static: hybridkv's per-group pools; vllm: vLLM 0.33's runtime layout, one
# shared pool at its inflated block size), H100 SXM roofline.
RUN_MODEL ?= qwen3-next-80b-a3b
RUN_MEMORY ?= 16GiB
RUN_TRACE ?= agentic
RUN_LIMITS ?= --max-num-seqs 64 --max-model-len 32768 --max-num-batched-tokens 8192
run: build
	$(BIN)/hybridkv plan --model $(RUN_MODEL) --memory $(RUN_MEMORY) $(RUN_LIMITS)
	$(BIN)/hybridkv simulate --model $(RUN_MODEL) --memory $(RUN_MEMORY) --trace $(RUN_TRACE) $(RUN_LIMITS)

bench: build
	@for b in benches/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf target $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
