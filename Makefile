# Two commands do everything on a fresh machine:
#   make demo   replay the bundled battery fleet (sets itself up)
#   make test   run the whole test suite (sets itself up, Chromium included)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SPEED ?= 1000x

.PHONY: demo test bench setup lint data clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/sbg replay data/battery_fleet.csv.gz --speed $(SPEED) --alerts-db artifacts/demo_alerts.sqlite

# Browser tests drive Debian's chromium; install it when it is missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

test: $(STAMP) chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

lint: $(STAMP)
	$(BIN)/ruff check sbg tests benchmarks apps notebooks

data: $(STAMP)
	$(BIN)/sbg data generate

clean:
	rm -rf $(VENV) artifacts .pytest_cache .hypothesis build *.egg-info
