# One-command entry points. Each target sets up what it needs on a fresh clone with Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster_home
# bash with pipefail: `make demo` pipes the run through a filter and must still fail when the run does.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

# Plain `make` prints the targets; `## target: text` comments above each target are the help.
.DEFAULT_GOAL := help
.PHONY: help demo test lint ui bench docs clean

## help: list the targets with one line each (plain `make` does the same)
help:
	@awk '/^## [a-zA-Z_-]+:/ { sub(/^## /, ""); split($$0, part, ": "); \
	  printf "  %-20s %s\n", part[1], substr($$0, length(part[1]) + 3) }' $(MAKEFILE_LIST)

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
# The terminal shows each stage's progress and result (isic_assets/run_progress.py); the full event
# log is in the UI (make ui) and in <data dir>/logs/.
demo: $(VENV)/.installed
	@mkdir -p $(DAGSTER_HOME)
	@echo "materializing every asset on the demo mirror (full log: make ui, or data/logs/)"
	@$(BIN)/dagster asset materialize -m isic_assets --select '*' 2>&1 | $(BIN)/python -m isic_assets.run_progress
	@$(BIN)/python -m isic_assets.summary

# Debian's Chromium for the browser test (isic_assets_tests/test_e2e_ui.py): Playwright drives it
# through executable_path, so no browser is downloaded at test time. Installed only when missing and
# only as root (CI runs as root); otherwise this says so and the UI test skips with the same reason.
CHROMIUM := /usr/bin/chromium
.PHONY: browser
## browser: install Debian's chromium for the UI test when missing (root only)
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium for the UI test (apt-get)"; \
	  apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	else \
	  echo "NOTE: $(CHROMIUM) is missing and cannot be installed here (needs root and apt-get):"; \
	  echo "      the browser UI test will be skipped. Install it with: sudo apt-get install --no-install-recommends chromium"; \
	fi

# Debian's exFAT tools for the no-hard-link test (isic_assets_tests/test_pipeline_demo.py mounts an
# exFAT image as the data root: exfatprogs makes it, exfat-fuse mounts it where the kernel has no
# exfat driver). Installed only when missing and only as root, like the browser; otherwise the test
# skips with the same reason.
.PHONY: fault-tools
## fault-tools: install Debian's exfatprogs and exfat-fuse for the filesystem fault tests when missing (root only)
fault-tools:
	@if command -v mkfs.exfat >/dev/null && command -v mount.exfat-fuse >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's exfatprogs and exfat-fuse for the filesystem fault tests (apt-get)"; \
	  apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends exfatprogs exfat-fuse >/dev/null; \
	else \
	  echo "NOTE: mkfs.exfat or mount.exfat-fuse is missing and cannot be installed here (needs root and apt-get):"; \
	  echo "      the no-hard-link test will be skipped. Install them with: sudo apt-get install exfatprogs exfat-fuse"; \
	fi

## test: install with dev extras (Debian's chromium and exFAT tools, see browser and fault-tools) and run the whole test suite
test: $(VENV)/.installed-dev browser fault-tools
	$(BIN)/python -m pytest -n 2 --dist loadfile -p no:cacheprovider

## lint: ruff over the whole repository (rules in pyproject.toml [tool.ruff])
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

## ui: the Dagster UI and daemon on http://127.0.0.1:3000 with the same instance as `make demo`
ui: $(VENV)/.installed pool
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

# Store the write pool's limit in the instance: dagster.yaml's default_limit alone is applied lazily,
# and the first runs ever queued for the pool could start together (README, "Safe operation").
.PHONY: pool
## pool: store the isic_data write pool's limit (1) in the instance
pool: $(VENV)/.installed
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster instance concurrency set isic_data 1

## bench: image preprocessing, ingestion and core-step speed benchmarks (tables for the README)
bench: $(VENV)/.installed
	$(BIN)/python bench/bench_transform.py
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_core.py

## docs: regenerate the documentation derived from code (docs/HARMONIZATION.md)
docs: $(VENV)/.installed
	$(BIN)/python tools/update_readme.py

## clean-intermediates: delete downloads and the demo mirror once every reader is newer (CLEAN=... picks)
.PHONY: clean-intermediates
clean-intermediates: $(VENV)/.installed
	mkdir -p $(DAGSTER_HOME)
	ISIC_CLEAN_TARGETS='$(CLEAN)' $(BIN)/dagster job execute -m isic_assets -j clean_intermediates

## clean: delete what the pipeline wrote under ISIC_DATA_DIR (never the dropzone or a catalog) and the instance's runs
clean: $(VENV)/.installed
	$(BIN)/python -m isic_assets.core.operation.clean_outputs
	@for d in storage history schedules logs; do \
	  if [ -e $(DAGSTER_HOME)/$$d ]; then echo "deleting $(DAGSTER_HOME)/$$d"; rm -rf $(DAGSTER_HOME)/$$d; fi; \
	done
