PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint bench scenarios clean

$(BIN)/rems-gateway: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

## Run the gateway on 127.0.0.1:8080 (HTTP) with the embedded SQLite database ./rems-gateway.db
run: $(BIN)/rems-gateway
	$(BIN)/rems-gateway serve $(ARGS)

## Run the whole test suite (lint, import contracts, unit, property, scenarios, integration) on SQLite, and on
## PostgreSQL too when REMS_TEST_POSTGRES_URL is set (see README, .ci/run)
test: $(BIN)/rems-gateway
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/pytest

scenarios: $(BIN)/rems-gateway
	$(BIN)/rems-gateway scenario run fixtures/scenarios/*.yaml

bench: $(BIN)/rems-gateway
	$(BIN)/python bench/decide.py

lint: $(BIN)/rems-gateway
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) *.egg-info rems-gateway.db*
