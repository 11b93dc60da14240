# sssi — common tasks. Every target works on a fresh machine: it creates (or reuses)
# the virtual environment .venv and installs into it.
#
# TORCH_SPEC picks the torch build installed before the package. The default is the
# CPU build; on a GPU machine use e.g.  make install TORCH_SPEC="torch==2.13.0"
# with the index of your CUDA version (see README).

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
STAMP       := $(VENV)/.installed
PYTEST_ARGS ?=
# test processes (pytest-xdist; each runs torch on one thread, tests/conftest.py):
# 2 halves the suite's time on a 2-core machine; TEST_WORKERS=0 runs it in one process
TEST_WORKERS ?= 2

.PHONY: install demo study-demo test lint format bench bench-game bench-infer clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## the whole story on the embedded synthetic data (generated on first use): pretrain the
## game, fine-tune with 10 % labels from it and from scratch, evaluate, compare, map
demo: $(STAMP)
	$(PY) -m sssi.demo

## the scaled-down label-efficiency study (3 pretext methods + scratch, 6 label
## fractions, 2 seeds) on the synthetic data; table and plot in outputs/label_efficiency/demo
study-demo: $(STAMP)
	PYTHON=$(PY) experiments/label_efficiency/run.sh demo

## the test suite
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check sssi tests experiments

format: $(STAMP)
	$(VENV)/bin/ruff format sssi tests experiments

## data-pipeline benchmark (patches/s vs raw window reads)
bench: $(STAMP)
	$(PY) -m experiments.benchmarks.data_pipeline

## the game's training step (the paper's players, batch 8, 128 px, 2 threads) beside
## the authors' step when REFERENCE=path/to/authors_step.py is given; the data path's margin
bench-game: $(STAMP)
	$(PY) -m experiments.benchmarks.game_step --threads 2 $(if $(REFERENCE),--reference $(REFERENCE))

## full-tile inference benchmark (MP/s, peak memory vs tile size)
bench-infer: $(STAMP)
	$(PY) -m experiments.benchmarks.inference

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
