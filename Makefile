# The README's two commands are these targets, so docs and CI cannot drift apart.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo demo-report test setup

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# CPU torch first (the build on local disk), so no dependency pulls a CUDA build. The demo needs
# the package alone; the tests add pytest and triton (its interpreter runs the kernel tests).
# --no-compile: Python compiles the modules a run imports, not all of torch and transformers (half the install).
$(VENV)/.installed-base: setup.py $(BIN)/python
	$(BIN)/pip install -q --no-compile torch==2.13.0
	$(BIN)/pip install -q --no-compile -e .
	touch $@

$(VENV)/.installed: $(VENV)/.installed-base
	$(BIN)/pip install -q --no-compile -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed-base
	$(BIN)/python scripts/train.py experiment=countdown_tiny

# the CPU demo once per seed (0, 1, 2): docs/demo_report.md (README's results table) and .png
demo-report: $(VENV)/.installed-base
	$(BIN)/python scripts/demo_report.py

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15 tests
