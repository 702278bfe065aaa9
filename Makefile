# The two commands: `make run` and `make test`. Everything else is a helper for them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV    := $(VENV)/.installed-dev

.PHONY: run test test-sqlite test-postgres lint typecheck openapi check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Serving needs only the package; the tests add the dev extras (pytest, Playwright, mypy, …).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $(STAMP)

$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP) $(DEV)

## run: install, migrate the embedded SQLite database, serve on 127.0.0.1:8000
run: $(STAMP)
	$(BIN)/backinstock serve --host 127.0.0.1 --port 8000

## test: the whole suite on SQLite + in-process broker, then on PostgreSQL + Redis
test: test-sqlite test-postgres

# pytest-xdist processes, each with its own database and Redis database (tests/conftest.py):
# two for SQLite, whose suite is CPU-bound in its own processes, three for PostgreSQL +
# Redis, whose longest tests mostly wait for the worker processes, servers and Prometheus
# they start (190.7-204.4 s with three against 216.0-227.6 s with two; SQLite 130.0 s
# against 132.4 s: docs/architecture.md, "Testing").
PYTEST := $(BIN)/python -m pytest -q --dist worksteal

test-sqlite: $(DEV)
	BACKINSTOCK_TEST_BACKEND=sqlite $(PYTEST) -n 2

test-postgres: $(DEV)
	BACKINSTOCK_TEST_BACKEND=postgres $(PYTEST) -n 3

lint: $(DEV)
	$(BIN)/ruff check src tests bench alembic
	$(BIN)/ruff format --check src tests bench alembic

typecheck: $(DEV)
	$(BIN)/mypy
	$(BIN)/mypy bench/*.py

## openapi: regenerate openapi.yaml from the app (a test fails when it drifts)
openapi: $(DEV)
	$(BIN)/python -m backinstock.openapi > openapi.yaml

check: lint typecheck test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
