# Every target that runs something first makes sure the virtualenv exists and
# holds the current dependencies, so `make run` and `make test` each work alone
# on a fresh checkout.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "leadsync needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The embedded default config, whatever ./daemon.toml says (leadsync run alone would use it).
run: $(STAMP)
	$(BIN)/leadsync run --config "$$($(BIN)/python -c 'from importlib import resources; print(resources.files("daemon") / "default.toml")')"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# Also leadsync as operators install it: a wheel in a fresh virtualenv (.ci/wheel-smoke),
# run beside the suite by .ci/suite, whose output keeps pytest's summary the last line
# CI reads. The suite runs on TEST_WORKERS pytest-xdist workers (0: in this process,
# one test at a time); a worker that finishes its share takes tests queued for the
# others (worksteal). Most of the suite's time is daemons and commands in processes of
# their own, starting up or waiting on an interval: on 2 cores, 4 workers keep the CPUs
# busier than 3 (make test 79 s against 83 s) and 3 than 2.
TEST_WORKERS ?= 4
# leadsync's own modules are compiled first: the suite starts some 400 interpreters
# (daemons, their merger workers, commands), and each would compile them again
# wherever PYTHONDONTWRITEBYTECODE is set. A module changed since is compiled as usual.
test: lint typecheck
	$(BIN)/python -m compileall -q daemon actors storage
	PYTHON=$(PYTHON) PIP=$(BIN)/pip TEST_WORKERS=$(TEST_WORKERS) .ci/suite

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
