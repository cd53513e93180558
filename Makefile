# Quick start: `make run` (train, evaluate and export on the bundled sample) and `make test`.
# Each target creates the virtual environment and installs the package when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-slow benchmark lint ci

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/kerasrnn run --data sample --out runs/quickstart --resume --quiet

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=25

ci: lint test

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

benchmark: $(STAMP)
	$(BIN)/python benchmarks/export_sizes.py
	$(BIN)/python benchmarks/int8_agreement.py
	$(BIN)/python benchmarks/training_speed.py
	$(BIN)/python benchmarks/firmware_sizes.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
