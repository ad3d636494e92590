# The two commands of the README are `make demo` and `make test`; both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-unit lint stack-start stack-stop stack-status bench bench-isolation bench-fan-out

$(STAMP): pyproject.toml dev/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e ./dev
	touch $@

venv: $(STAMP)

demo: venv
	$(BIN)/courier demo

# The whole suite, then the fault matrix (tests/faults: it restarts stack services, so it runs
# on its own, after everything else).
test: venv
	$(BIN)/pytest
	$(BIN)/pytest -m faults

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test-unit: venv
	$(BIN)/pytest -m "not integration"

stack-start: venv
	$(BIN)/courier stack start

stack-stop: venv
	$(BIN)/courier stack stop

stack-status: venv
	$(BIN)/courier stack status

bench: venv
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

bench-isolation: venv
	$(BIN)/python -m benchmarks.isolation $(BENCH_ARGS)

bench-fan-out: venv
	$(BIN)/python -m benchmarks.fan_out $(BENCH_ARGS)
