# The README's two commands are `make demo` and `make test`; both create .venv when missing
# and reuse it afterwards (the stamps below are redone only when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
# torch is pinned to the CPU build these machines have; override for a GPU machine,
# e.g. `make demo TORCH_SPEC=torch` or TORCH_SPEC="torch==2.13.0 --index-url ...".
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: demo test lint format typecheck docs clean

demo: $(VENV)/.installed
	$(BIN)/lightning-automl fit -c recipes/quickstart.yaml

test: $(VENV)/.installed-dev lint typecheck
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy lightning_automl

docs: $(VENV)/.installed-docs
	$(BIN)/mkdocs build --strict

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install $(TORCH_SPEC)
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -e ".[dev]"
	touch $@

$(VENV)/.installed-docs: $(VENV)/.installed
	$(PIP) install -e ".[docs]"
	touch $@

clean:
	rm -rf $(VENV) build dist site *.egg-info .pytest_cache .ruff_cache .mypy_cache
