# Phase 28 — Fine-tuning under a memory budget.
# Two commands on a fresh machine:  `make lab`  and  `make test`.  See README.md.

SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install
# Extra arguments for JupyterLab, e.g. make lab LAB_ARGS="--no-browser --port=8890"
LAB_ARGS ?=
# Notebooks for store-outputs / check-portability (default: every solution)
NOTEBOOKS ?=
# Fixed thread count so timings and float reductions are the same run to run (see minigpt/repro.py)
export OMP_NUM_THREADS ?= 2
export MKL_NUM_THREADS ?= 2
# The course never downloads models or data sets: make sure libraries do not try.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help install lab test test-unit test-notebooks check-env pretrain benchmark benchmark-sharded benchmark-minilm benchmark-grid benchmark-any-model benchmark-estimator benchmark-families clean-venv
.PHONY: generate-labs start grade grade-all docs time-labs store-outputs check-portability cloud-cells kernel lint
.PHONY: test-ui ui-chromium lab-cmd run-lab

help:
	@echo "make lab        install (first time only) and open JupyterLab on the course"
	@echo "make test       install (first time only), run unit tests and execute the notebooks"
	@echo "make check-env  print OK/FAIL for Python, every pinned package, and CUDA"
	@echo "make kernel     register the course's kernel for your user (VS Code, another Jupyter)"
	@echo "make pretrain   re-create the shipped MiniGPT checkpoint on CPU (~10 min on 2 idle cores)"
	@echo "make benchmark  from-scratch NF4/LoRA/QLoRA speed against bitsandbytes/peft (~4 min; benchmarks/results/speed_cpu.json)"
	@echo "make benchmark-sharded  per-rank memory of ddp/zero1/fsdp2 on 1 and 2 CPU ranks vs the estimate (~1 min)"
	@echo "make benchmark-minilm  MiniLM fine-tuned full / LoRA / QLoRA: accuracy, time, memory (~20 min)"
	@echo "make benchmark-grid  the forum's grid trained on MiniLM: full/LoRA x fp32/bf16 autocast x 1x/8x inputs (~15 min)"
	@echo "make benchmark-any-model  closed form vs fake-tensor trace, full-size Mistral-7B / Qwen2.5-7B (~1 min)"
	@echo "make benchmark-estimator  estimator speed (CLI, closed form, fake trace) against the issue-17 baseline (~3 min)"
	@echo "make benchmark-families  per-family table: every configs/*.json, closed form vs fake trace (~2 min)"
	@echo "make start LEARNER=<name>  your profile and your own copy of the labs in learners/<name>/"
	@echo "make run-lab LAB=03 LEARNER=<name>  run your copy of a lab headless (errors allowed), print its checks"
	@echo "make grade LEARNER=<name>  run copies of a learner's labs, write learners/<name>/grade.md"
	@echo "make grade-all             grade every learner and print a summary table"
	@echo "make generate-labs         write labs/ from solutions/ (authors)"
	@echo "make docs                  recompute every generated figure in theory/ and solutions/0N-*-ref.md"
	@echo "make time-labs             time every solution and unsolved lab, write the table into README.md"
	@echo "make store-outputs         re-execute solutions/ and store their outputs (native kernels, 2 threads)"
	@echo "make check-portability     run solutions/ under every CPU setting, diff the checked outputs"
	@echo "make cloud-cells           rewrite the labs' Colab/Kaggle cell and links from course/cloud.py"
	@echo "make lint                  ruff and pylint's symilar (copied code; make test runs them too)"
	@echo "make test-ui               browser smoke test: a lab in headless Chromium (needs Debian's chromium)"

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
$(STAMP): $(PY) requirements.txt requirements-data.txt requirements-dev.txt pyproject.toml
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-data.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --prefix $(VENV) --name phase28 --display-name "Phase 28 (minigpt)" >/dev/null
	@touch $(STAMP)
	@echo "Installed. Check it with: make check-env"

install: $(STAMP)

# Jupyter refuses to start as root (common in containers and CI) unless told to.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

# The command `make lab` runs; `make test-ui` starts JupyterLab with the same one.
LAB_CMD = $(VENV)/bin/jupyter lab --ServerApp.root_dir=. $(ROOT_FLAG)

lab: $(STAMP)
	$(LAB_CMD) $(LAB_ARGS)

lab-cmd:
	@echo '$(LAB_CMD)'

# The course's kernel for your user too, so VS Code and other Jupyter installations can pick it.
kernel: $(STAMP)
	$(PY) -m ipykernel install --user --name phase28 --display-name "Phase 28 (minigpt)"

check-env:
	@if [ -x $(PY) ]; then $(PY) -m course.envcheck; else python3 -m course.envcheck; fi

# --- tests ----------------------------------------------------------------------------------
# The notebooks run on one thread (NB_TEST_ENV below), so they run beside the unit tests, which
# have the other core most of the time; their output is kept in a log and printed after the unit
# tests' (their own process group: a stopped `make test` stops both). The notebooks end long before
# the unit tests, so the slowest unit-test file (LATE_TESTS: it executes every generated lab) runs
# after them in the same job, not in the unit tests: each core then has about half the work.
NB_LOG := build/test-notebooks.log
LATE_TESTS := tests/course/test_lab_invert.py
UNIT_ARGS :=
test: $(STAMP)
	@start=$$(date +%s); mkdir -p build; \
	set -m; { $(MAKE) --no-print-directory test-notebooks; a=$$?; \
	          MPLBACKEND=Agg $(PY) -m pytest -q -p no:cacheprovider $(LATE_TESTS); b=$$?; \
	          [ $$a = 0 ] && [ $$b = 0 ]; } >$(NB_LOG) 2>&1 & nb=$$!; set +m; \
	trap 'kill -- -$$nb 2>/dev/null' INT TERM EXIT; \
	$(MAKE) --no-print-directory test-unit UNIT_ARGS="--ignore=$(LATE_TESTS)"; unit=$$?; \
	wait $$nb; notebooks=$$?; trap - INT TERM EXIT; \
	echo "--- the notebooks, then $(LATE_TESTS) (run beside the unit tests; log: $(NB_LOG))"; cat $(NB_LOG); \
	echo "make test took $$(( $$(date +%s) - start )) s (unit tests: exit $$unit, notebooks and $(LATE_TESTS): exit $$notebooks)"; \
	[ $$unit = 0 ] && [ $$notebooks = 0 ]

test-unit: $(STAMP)
	MPLBACKEND=Agg $(PY) -m pytest -q --durations=12 $(UNIT_ARGS) tests  # no windows in unit tests; the 12 slowest are listed

# The notebooks' outputs are stored with the native CPU kernels on 2 threads (make store-outputs);
# they are tested with torch's generic kernels on 1 thread, so a checked output that depends on the
# CPU fails here, on the author's machine, not only on a newcomer's. Must equal the "test" setting
# of course/portability.py (tests/course/test_portability.py checks it). docs/AUTHORING.md says why.
NB_TEST_ENV := ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41 MINIGPT_THREADS=1

test-notebooks: $(STAMP)
	@if ls solutions/*.ipynb >/dev/null 2>&1; then \
	  echo "notebooks run under: $(NB_TEST_ENV)"; \
	  env $(NB_TEST_ENV) $(PY) -m pytest -q --nbval-lax --nbval-current-env -p no:cacheprovider solutions; \
	else echo "no solution notebooks yet"; fi

# ruff, and pylint's symilar (copied blocks of 6+ lines): the two checks of tests/test_architecture.py,
# which make test runs too; defined there once.
lint: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/test_architecture.py -k "ruff or copied"

# Authors: rewrite every lab's first code cell (the Colab/Kaggle bootstrap), its links and README's
# table of links from course/cloud.py (COURSE_REPO); then make generate-labs.
cloud-cells: $(STAMP)
	$(PY) -m course.cloud_cells

# Authors: re-execute solutions/ in place under the storing setting (native kernels, 2 threads).
store-outputs: $(STAMP)
	$(PY) -m course.portability store $(NOTEBOOKS)

# Authors: execute solutions/ under every CPU setting and diff each checked output with the stored one.
check-portability: $(STAMP)
	$(PY) -m course.portability check $(NOTEBOOKS)

# --- browser smoke test (tests_ui/): a lab as a learner sees it -------------------------------------
# Debian's chromium, driven by Playwright (requirements-ui.txt); never a browser download.
CHROMIUM ?= /usr/bin/chromium
UI_LAB ?= labs/01-lora-from-scratch.ipynb
UI_TIMEOUT ?= 300
UI_STAMP := $(VENV)/.stamp-ui
UI_SHOT = build/ui/$(basename $(notdir $(UI_LAB))).png

$(UI_STAMP): $(STAMP) requirements-ui.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-ui.txt
	@touch $(UI_STAMP)

ui-chromium:
	@test -x "$(CHROMIUM)" || { echo "make test-ui: no Chromium at $(CHROMIUM); install Debian's (apt-get install chromium) or set CHROMIUM=/path/to/chromium"; exit 2; }

# Stops after UI_TIMEOUT seconds; the test stops JupyterLab, its kernel and the browser either way.
test-ui: ui-chromium $(UI_STAMP)
	@start=$$(date +%s); rm -f $(UI_SHOT); \
	PHASE28_LAB_CMD='$(LAB_CMD)' PHASE28_UI_REQUIRED=1 CHROMIUM='$(CHROMIUM)' UI_LAB='$(UI_LAB)' UI_SHOT='$(UI_SHOT)' \
	  timeout --foreground -k 30 $(UI_TIMEOUT) $(PY) -m pytest -q -s -p no:cacheprovider tests_ui; rc=$$?; \
	if [ $$rc = 124 ]; then echo "make test-ui: stopped after UI_TIMEOUT=$(UI_TIMEOUT) s"; fi; \
	if [ -f $(UI_SHOT) ]; then echo "screenshot: $(UI_SHOT)"; fi; \
	echo "make test-ui took $$(( $$(date +%s) - start )) s"; exit $$rc

# --- course artefacts -----------------------------------------------------------------------
pretrain: $(STAMP)
	$(PY) -m course.pretrain

# Rewrites the <!-- gen:... --> regions of the theory files from the package (tests/course/test_theory.py
# fails when they are stale). Fake-tensor traces are cached in theory/traces.json by code hash.
docs: $(STAMP)
	$(PY) -m course.docs

benchmark: $(STAMP)
	$(PY) benchmarks/bench_from_scratch.py

# writes benchmarks/results/sharded_cpu.json, which theory/03's measured table is generated from
benchmark-sharded: $(STAMP)
	$(PY) benchmarks/bench_sharded.py

# MiniLM on Rotten Tomatoes, full vs LoRA (ours, peft) vs QLoRA (ours, bitsandbytes): 2,000 reviews, one
# epoch, the whole test split; writes benchmarks/results/minilm.json and .csv (~15-25 min on 2 cores).
benchmark-minilm: $(STAMP)
	$(PY) benchmarks/bench_minilm.py

# the learner's grid (theory 03, lab 05) trained for real on MiniLM: full / LoRA x fp32 / bf16 autocast x
# inputs 1x / 8x; writes benchmarks/results/forum_grid.json and .csv (~15 min on 2 busy cores)
benchmark-grid: $(STAMP)
	$(PY) benchmarks/bench_forum_grid.py

# The closed form against a fake-tensor trace of the same full-size spec (configs/), no weights.
benchmark-any-model: $(STAMP)
	$(PY) benchmarks/bench_any_model.py

# Estimator speed, today's code against the commit before issue 17 (a temporary git worktree), in one run;
# writes benchmarks/results/estimator_speed.json
benchmark-estimator: $(STAMP)
	$(PY) benchmarks/bench_estimator_speed.py

# Every configs/*.json at one setting: closed form vs fake trace; writes benchmarks/results/families.{json,md}
benchmark-families: $(STAMP)
	$(PY) benchmarks/bench_families.py

# --- labs, learners and grading (docs/AUTHORING.md, learners/README.md) ------------------------
# Usage: make start LEARNER=ana;  make grade LEARNER=ana GRADE_ARGS="--cell-timeout 600"
LEARNER ?=
LAB ?=
GRADE_ARGS ?=
# LEARNER and LAB reach the programs through the environment ("$$LEARNER"), never pasted into a
# shell line, so LEARNER='x"; touch pwned; echo "' is only a name the program refuses; $(value)
# keeps make itself from expanding a $(shell ...) written inside them.
override LEARNER := $(value LEARNER)
override LAB := $(value LAB)
export LEARNER LAB
generate-labs: $(STAMP)
	$(PY) -m course.labs $(if $(PRUNE),--prune,)

time-labs: $(STAMP)
	$(PY) -m course.timing

start: $(STAMP)
	@$(PY) -m course.learner start "$$LEARNER"

run-lab: $(STAMP)
	@$(PY) -m course.run_lab "$$LAB" "$$LEARNER"

grade: $(STAMP)
	@$(PY) -m course.grading "$$LEARNER" $(GRADE_ARGS)

grade-all: $(STAMP)
	$(PY) -m course.grading --all $(GRADE_ARGS)

clean-venv:
	rm -rf $(VENV)
