# Phase 28 — Fine-tuning under a memory budget.
# Two commands on a fresh machine:  `make lab`  and  `make test`.  See README.md.

SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install
# Extra arguments for JupyterLab, e.g. make lab LAB_ARGS="--no-browser --port=8890"
LAB_ARGS ?=
# Fixed thread count so timings and float reductions are the same run to run (see minigpt/repro.py)
export OMP_NUM_THREADS ?= 2
export MKL_NUM_THREADS ?= 2
# The course never downloads models or data sets: make sure libraries do not try.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help install lab test test-unit test-notebooks check-env pretrain benchmark clean-venv
.PHONY: generate-labs start grade grade-all docs time-labs

help:
	@echo "make lab        install (first time only) and open JupyterLab on the course"
	@echo "make test       install (first time only), run unit tests and execute the notebooks"
	@echo "make check-env  print OK/FAIL for Python, every pinned package, and CUDA"
	@echo "make pretrain   re-create the shipped MiniGPT checkpoint on CPU (~10 min on 2 idle cores)"
	@echo "make benchmark  from-scratch LoRA/NF4 speed against peft/bitsandbytes"
	@echo "make start LEARNER=<name>  your profile and your own copy of the labs in learners/<name>/"
	@echo "make grade LEARNER=<name>  run copies of a learner's labs, write learners/<name>/grade.md"
	@echo "make grade-all             grade every learner and print a summary table"
	@echo "make generate-labs         write labs/ from solutions/ (authors)"
	@echo "make docs                  recompute every generated figure in theory/ and solutions/0N-*-ref.md"
	@echo "make time-labs             time every solution and unsolved lab, write the table into README.md"

# --- installation -------------------------------------------------------------------------
# conda/mamba when present (environment.yml), otherwise the standard library's venv.
$(PY):
	@if command -v mamba >/dev/null 2>&1; then \
	  echo "Creating $(VENV) with mamba"; mamba env create -q -p $(VENV) -f environment.yml; \
	elif command -v conda >/dev/null 2>&1; then \
	  echo "Creating $(VENV) with conda"; conda env create -q -p $(VENV) -f environment.yml; \
	else \
	  echo "Creating $(VENV) with python3 -m venv"; python3 -m venv $(VENV); \
	fi

# Re-runs only when a requirements file changes: installing twice is a no-op.
$(STAMP): $(PY) requirements.txt requirements-data.txt pyproject.toml
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-data.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --prefix $(VENV) --name phase28 --display-name "Phase 28 (minigpt)" >/dev/null
	@touch $(STAMP)
	@echo "Installed. Check it with: make check-env"

install: $(STAMP)

# Jupyter refuses to start as root (common in containers and CI) unless told to.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=. $(ROOT_FLAG) $(LAB_ARGS)

check-env:
	@if [ -x $(PY) ]; then $(PY) -m minigpt.envcheck; else python3 -m minigpt.envcheck; fi

# --- tests ----------------------------------------------------------------------------------
test: $(STAMP)
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory test-unit && $(MAKE) --no-print-directory test-notebooks; rc=$$?; \
	echo "make test took $$(( $$(date +%s) - start )) s"; exit $$rc

test-unit: $(STAMP)
	MPLBACKEND=Agg $(PY) -m pytest -q tests  # no windows in unit tests; notebooks keep the inline backend

test-notebooks: $(STAMP)
	@if ls solutions/*.ipynb >/dev/null 2>&1; then \
	  $(PY) -m pytest -q --nbval-lax --nbval-current-env -p no:cacheprovider solutions; \
	else echo "no solution notebooks yet"; fi

# --- course artefacts -----------------------------------------------------------------------
pretrain: $(STAMP)
	$(PY) -m minigpt.pretrain

# Rewrites the <!-- gen:... --> regions of the theory files from the package (tests/test_theory.py
# fails when they are stale). Fake-tensor traces are cached in theory/traces.json by code hash.
docs: $(STAMP)
	$(PY) -m minigpt.docs

benchmark: $(STAMP)
	$(PY) benchmarks/bench_from_scratch.py

# --- labs, learners and grading (docs/AUTHORING.md, learners/README.md) ------------------------
# Usage: make start LEARNER=ana;  make grade LEARNER=ana GRADE_ARGS="--cell-timeout 600"
LEARNER ?=
GRADE_ARGS ?=
generate-labs: $(STAMP)
	$(PY) scripts/generate_labs.py $(if $(PRUNE),--prune,)

time-labs: $(STAMP)
	$(PY) scripts/time_labs.py

start: $(STAMP)
	@$(PY) -m minigpt.learner start "$(LEARNER)"

grade: $(STAMP)
	$(PY) -m minigpt.grading "$(LEARNER)" $(GRADE_ARGS)

grade-all: $(STAMP)
	$(PY) -m minigpt.grading --all $(GRADE_ARGS)

clean-venv:
	rm -rf $(VENV)
