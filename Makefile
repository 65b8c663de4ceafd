# Two commands do everything on a fresh machine:
#   make demo   serve the live dashboard replaying the bundled battery fleet (sets itself up)
#   make test   run the whole test suite (sets itself up, Chromium included)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SPEED ?= 100x
PORT ?= 5006

.PHONY: demo replay test bench bench-latency setup lint data clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	@mkdir -p artifacts
	@echo "sbg: the dashboard will be at http://127.0.0.1:$(PORT)/monitor  (Ctrl-C stops it)"
	$(BIN)/sbg serve data/battery_fleet.csv.gz --speed $(SPEED) --loop --autostart --port $(PORT) \
	  --alerts-db artifacts/demo_alerts.sqlite

# The same replay in the terminal, alerts printed as they fire.
replay: $(STAMP)
	@mkdir -p artifacts
	$(BIN)/sbg replay data/battery_fleet.csv.gz --speed 1000x --alerts-db artifacts/demo_alerts.sqlite

# Browser tests drive Debian's chromium; install it when it is missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

test: $(STAMP) chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

bench-latency: $(STAMP) chromium
	$(BIN)/python benchmarks/latency.py --minutes 10

lint: $(STAMP)
	$(BIN)/ruff check sbg tests benchmarks apps notebooks

data: $(STAMP)
	$(BIN)/sbg data generate

clean:
	rm -rf $(VENV) artifacts .pytest_cache .hypothesis build *.egg-info
