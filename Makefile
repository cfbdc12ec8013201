# The one list of commands. `make help` shows them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Two installs: what running needs (`make up`, `make worker`), and everything the tests, lint
# and benchmarks need besides (the dev tools, Keras on JAX).
RUNTIME := $(VENV)/.runtime-stamp
INSTALLED := $(VENV)/.installed-stamp

# Where this workplace keeps the genuine Fashion-MNIST, unless TRICKLAB_DATA_DIR says otherwise.
SHARED_DATA := $(wildcard ../shared/data/fashion-mnist)
ifneq ($(SHARED_DATA),)
export TRICKLAB_DATA_DIR ?= $(abspath $(SHARED_DATA))
endif

.DEFAULT_GOAL := help
.PHONY: help install up worker test test-fast lint bench notebook-study notebook-study-cnn defaults search-mlp chaos clean

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(RUNTIME): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "Installing what tricklab needs to run into $(VENV): TensorFlow is most of it, a few minutes the first time."
	$(PY) -m pip install --progress-bar on --editable '.[postgres]'
	@touch $@

$(INSTALLED): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --editable '.[dev,postgres,jax]'
	@touch $@ $(RUNTIME)

install: $(INSTALLED) ## create .venv and install tricklab with its dev tools

# Never half up, and Ctrl-C a clean stop: scripts/up.sh supervises the API and the worker (when
# one ends, it stops the other and fails, saying which); on a terminal it runs as the
# foreground job of its own (scripts/foreground.py), so that Ctrl-C reaches it and its two
# processes but not make, which then ends as it did: 0 once both have stopped.
up: $(RUNTIME) ## initialise the database, serve the API and run one worker (Ctrl-C stops both)
	@$(PY) -m jobqueue.db
	@$(PY) scripts/foreground.py $(SHELL) scripts/up.sh $(PY)

worker: $(RUNTIME) ## run one more worker against the same configuration
	$(PY) -m worker

test: $(INSTALLED) ## install and run the whole test suite, then its backend-neutral tests on JAX
	$(PY) -m pytest
	KERAS_BACKEND=jax $(PY) -m pytest -m backends -p no:cacheprovider

test-fast: $(INSTALLED) ## the suite without slow, end-to-end and trainer-equivalence tests (about a minute)
	$(PY) -m pytest -m "not slow and not e2e and not equivalence"

lint: $(INSTALLED) ## ruff and mypy
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: $(INSTALLED) ## training and serving (MLP and CNN; CPU per prediction against HEAD), packing, searches (ASHA against none) and event-stream benchmarks on the genuine Fashion-MNIST, then the queue's, submissions' and retention's on SQLite and PostgreSQL (about 40 minutes)
	$(PY) -m bench.train
	$(PY) -m bench.train --architecture cnn --epochs 2
	$(PY) -m bench.pack
	$(PY) -m bench.search
	$(PY) -m bench.serve --cnn
	$(PY) -m bench.percall
	$(PY) -m bench.events
	$(PY) -m bench.queueing
	$(PY) -m bench.submit
	$(PY) -m bench.retention

# STUDY='{"repeats": 1, ...}' overrides the preset's fields (the page says so).
STUDY ?=
notebook-study: $(INSTALLED) ## rerun the study notebook on the genuine data into docs/notebook-study/ (about 5 minutes with one worker)
	$(PY) scripts/notebook_study.py $(if $(STUDY),--study '$(STUDY)')

notebook-study-cnn: $(INSTALLED) ## the same progression on the CNN into docs/notebook-study-cnn/ (preset notebook-cnn; over an hour in full on 2 cores)
	$(PY) scripts/notebook_study.py --preset notebook-cnn $(if $(STUDY),--study '$(STUDY)') $(if $(OUT),--out $(OUT))

defaults: $(INSTALLED) ## choose the trick defaults of each architecture on validation, into docs/defaults/ (about an hour on 2 cores)
	$(PY) scripts/defaults.py $(if $(BASE),--base '$(BASE)')

search-mlp: $(INSTALLED) ## search the MLP's recipe on validation, confirm it on fresh seeds, into docs/search-mlp/ and docs/recipes/mlp.json (about 25 minutes on 2 cores)
	$(PY) scripts/search_mlp.py $(if $(SEARCH),--search '$(SEARCH)')

CHAOS_JOBS ?= 60
CHAOS_KILLS ?= 60
chaos: $(INSTALLED) ## SIGKILL workers mid-job CHAOS_KILLS times over CHAOS_JOBS jobs; report losses
	TRICKLAB_CHAOS_JOBS=$(CHAOS_JOBS) TRICKLAB_CHAOS_KILLS=$(CHAOS_KILLS) \
	$(PY) -m pytest tests/e2e/test_reliability.py -k chaos -q -p no:cacheprovider

clean: ## remove the local database, artifacts and caches (not .venv)
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
