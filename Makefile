# Two entry points, each self-contained on a fresh machine with Python 3.11 + pip:
#   make test     create .venv if missing, install the kit, run the test suite
#   make report   create .venv if missing, install the kit, run the main job
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PROFILE ?= full
DEVICE  ?=
ARGS    ?=

.PHONY: install test lint report clean

$(BIN)/quantwm: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,ray]'
	@touch $@

install: $(BIN)/quantwm

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check quantwm tests benchmarks

report: install
	$(BIN)/quantwm notebooks --profile $(PROFILE) $(if $(DEVICE),--device $(DEVICE)) $(ARGS)

clean:
	rm -rf $(VENV) reports .pytest_cache
