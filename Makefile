# `make demo` and `make test` create .venv when needed, install into it once (re-installing only when
# requirements.txt or pyproject.toml change), and run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean-results

install: $(STAMP)

# --no-cache-dir: the environment is about 6.7 GB (torch's CUDA build); a cached copy of each download would
# double what it takes on a small disk (a CI run once stopped with 'No space left on device').
$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-cache-dir -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python experiments/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean-results:
	rm -rf results/drift_digits datasets/DriftDigits
