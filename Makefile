# Two commands on a fresh machine with Python 3.11+:  `make serve`  and  `make test`.
# The first interpreter that really runs and is 3.11 or newer (pyenv shims may exist but fail).
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do $$p -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test test-postgres test-cluster lint format schema bench audit clean

$(STAMP): pyproject.toml requirements.lock
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is required (python3 on PATH)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

## Serve on http://127.0.0.1:8000 (SQLite under ./data, in-memory pub/sub, the web client at /, GraphiQL at /graphql).
serve: install
	$(BIN)/chat-backend serve

## The whole test suite (SQLite + memory unless TEST_DATABASE_URL / TEST_BROADCAST_URL say otherwise).
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## The suite against the local PostgreSQL and Redis.
test-postgres: install
	TEST_DATABASE_URL=$${TEST_DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/postgres} \
	TEST_BROADCAST_URL=$${TEST_BROADCAST_URL:-redis://127.0.0.1:6379/0} \
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## README "Several instances" for real: scripts/run-cluster.sh (PostgreSQL, Redis, 2 instances,
## nginx, installed with apt-get if missing), one instance killed, clients resume through the other.
test-cluster: install
	RUN_CLUSTER_TEST=1 $(BIN)/python -m pytest tests/test_cluster.py $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy api schema migrations tests bench

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## Re-export schema.graphql from the code.
schema: install
	$(BIN)/chat-backend export-schema schema.graphql

## Re-lock dependencies after editing pyproject.toml.
lock:
	$(PYTHON) -m pip install --quiet uv && $(PYTHON) -m uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache

## Benchmarks (see bench/README.md); e.g. `make bench ARGS="--stack pg --scenario fanout"`.
bench: install
	$(BIN)/python -m bench.run $(ARGS)
