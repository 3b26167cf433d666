# One-command entry points. Each target sets up what it needs on a fresh clone with Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster_home

.PHONY: demo test ui bench docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install only when the project's dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

## demo: install, then materialize every asset on the demo mirror and print where the outputs are
demo: $(VENV)/.installed
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster asset materialize -m isic_assets --select '*'
	$(BIN)/python -m isic_assets.summary

## test: install with dev extras and run the whole test suite
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n 2 --dist loadfile -p no:cacheprovider

## ui: the Dagster UI and daemon on http://127.0.0.1:3000 with the same instance as `make demo`
ui: $(VENV)/.installed
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

## bench: ingestion benchmark (download MB/s vs curl, merge images/s, peak memory)
bench: $(VENV)/.installed
	$(BIN)/python bench/bench_ingest.py

## docs: regenerate the README sections derived from code (harmonization tables)
docs: $(VENV)/.installed
	$(BIN)/python tools/update_readme.py

clean:
	rm -rf data .dagster_home/storage .dagster_home/history .dagster_home/schedules .dagster_home/logs
