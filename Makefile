# Two commands do everything on a fresh machine:
#   make demo   replay the bundled battery fleet (sets itself up)
#   make test   run the whole test suite (sets itself up, Chromium included)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SPEED ?= 1000x

.PHONY: demo test bench setup lint data clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/sbg replay data/battery_fleet.csv.gz --speed $(SPEED) --alerts-db artifacts/demo_alerts.sqlite

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

lint: $(STAMP)
	$(BIN)/ruff check sbg tests benchmarks apps notebooks

data: $(STAMP)
	$(BIN)/sbg data generate

clean:
	rm -rf $(VENV) artifacts .pytest_cache .hypothesis build *.egg-info
