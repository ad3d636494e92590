# The two commands of the README are `make demo` and `make test`; both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-unit lint lint-alerts prometheus stack-start stack-stop stack-status bench bench-isolation bench-fan-out

$(STAMP): pyproject.toml dev/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e ./dev
	touch $@

venv: $(STAMP)

# Prometheus and promtool from Debian's package, unpacked under .tools/ (no service is installed
# or started; no root needed once apt's package lists are there). The alert rules are checked
# with them (lint-alerts) and tests/integration/test_alerts.py runs this Prometheus.
PROMETHEUS_DIR := .tools/prometheus
PROMTOOL := $(PROMETHEUS_DIR)/usr/bin/promtool

$(PROMTOOL):
	rm -rf $(PROMETHEUS_DIR) && mkdir -p $(PROMETHEUS_DIR)
	cd $(PROMETHEUS_DIR) && { apt-get download prometheus || { apt-get update -q && apt-get download prometheus; }; } \
	  && dpkg -x prometheus_*.deb . && rm prometheus_*.deb
	touch $@

prometheus: $(PROMTOOL)

demo: venv
	$(BIN)/courier demo

# The whole suite, then the fault matrix (tests/faults: it restarts stack services, so it runs
# on its own, after everything else).
test: venv prometheus
	$(BIN)/pytest
	$(BIN)/pytest -m faults

lint: venv lint-alerts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The alert rules: valid, and their promtool unit tests pass.
lint-alerts: $(PROMTOOL)
	$(PROMTOOL) check rules deploy/monitoring/alerts.yml
	$(PROMTOOL) test rules deploy/monitoring/alerts_test.yml

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
