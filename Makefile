# vidqa: `make run` runs the default pipeline on the sample video, `make test` runs the tests.
# Both create .venv and install everything they need on a fresh machine. `make check` is the
# fast lane of the edit-test loop (lint + every test that needs no real assets, < 2 minutes).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VIDQA := $(VENV)/bin/vidqa
STAMP := $(VENV)/.installed

.PHONY: run test check assets setup system-deps bench clean

run: $(STAMP)
	$(VIDQA) assets
	$(VIDQA) run pipeline.yaml --overwrite

test: $(STAMP) system-deps
	$(PY) -m pytest tests -q

check: $(STAMP)
	$(VENV)/bin/ruff check vidqa tests tools
	$(PY) -m pytest tests -q -m "not slow" -x

assets: $(STAMP)
	$(VIDQA) assets

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,eval,ray,cpu]"
	touch $(STAMP)

# Debian packages the tests need: a real RTSP server on loopback, and Chromium for the web view.
system-deps:
	@bash tools/install_system_deps.sh

bench: $(STAMP)
	$(PY) tools/bench_pipeline.py

clean:
	rm -rf $(VENV) build *.egg-info
