# Two commands do everything on a fresh machine:
#   make demo   serve the live dashboard replaying the bundled battery fleet (sets itself up: sbg and its ui extra)
#   make test   run the whole test suite (sets itself up: the dev extra, Chromium included)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# One stamp per extra installed: each says "this extra is installed for this pyproject.toml".
# The dev extra includes ui, so a current dev stamp satisfies the demo; the ui stamp never satisfies dev.
UI_STAMP := $(VENV)/.installed-ui
DEV_STAMP := $(VENV)/.installed-dev
SPEED ?= 100x
PORT ?= 5006
# make test runs the files on two pytest-xdist workers, each file whole on one worker (its module
# fixtures, a served app or a JupyterLab, start once). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2

.PHONY: demo replay test bench bench-latency bench-load setup lint data clean system-packages

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The demo needs sbg and its ui extra (Panel, HoloViews, Bokeh), not the test, benchmark and Dask tools.
$(UI_STAMP): pyproject.toml | $(BIN)/python
	@if [ -f $(DEV_STAMP) ] && [ $(DEV_STAMP) -nt pyproject.toml ]; then \
	  echo "sbg: the dev extra, which includes ui, is installed"; \
	else \
	  echo '$(BIN)/pip install --quiet -e ".[ui]"'; $(BIN)/pip install --quiet -e ".[ui]"; \
	fi
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(DEV_STAMP)

demo: $(UI_STAMP)
	@mkdir -p artifacts
	@echo "sbg: the dashboard will be at http://127.0.0.1:$(PORT)/monitor  (Ctrl-C stops it)"
	$(BIN)/sbg serve data/battery_fleet.csv.gz --speed $(SPEED) --loop --autostart --port $(PORT) \
	  --alerts-db artifacts/demo_alerts.sqlite

# The same replay in the terminal, alerts printed as they fire.
replay: $(UI_STAMP)
	@mkdir -p artifacts
	$(BIN)/sbg replay data/battery_fleet.csv.gz --speed 1000x --alerts-db artifacts/demo_alerts.sqlite

# Browser tests drive Debian's chromium; the service tests run Debian's prometheus and
# prometheus-alertmanager. Install whichever is missing.
system-packages:
	@missing=; for p in chromium prometheus prometheus-alertmanager; do \
	  command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "sbg: installing Debian packages:$$missing"; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

test: $(DEV_STAMP) system-packages
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: $(DEV_STAMP)
	$(BIN)/python benchmarks/run.py

bench-latency: $(DEV_STAMP) system-packages
	$(BIN)/python benchmarks/latency.py --minutes 10

# The full load run: 20 browser sessions on one served replay (the default test run holds 6).
bench-load: $(DEV_STAMP) system-packages
	SBG_LOAD_SESSIONS=20 $(BIN)/python -m pytest -q tests/test_load.py -k many_sessions

lint: $(DEV_STAMP)
	$(BIN)/ruff check sbg tests benchmarks apps notebooks

data: $(DEV_STAMP)
	$(BIN)/sbg data generate

clean:
	rm -rf $(VENV) artifacts .pytest_cache .hypothesis build *.egg-info
