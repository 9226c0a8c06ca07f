# lambda-db: every target builds what it needs from nothing.
#   make demo   reproduce the incident and its fix on an embedded PostgreSQL
#   make test   lint, type-check and run the test suite (starts its own server)
#   make bench  run the benchmarks and rewrite BENCHMARKS.md

# sam (in tests and sam-build) must not try to phone home from an offline machine.
export SAM_CLI_TELEMETRY := 0

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: all demo test lint typecheck pytest bench system-deps sam-build clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cli,dev,bench,sqlalchemy]'
	touch $(STAMP)

# pgbouncer (demo part 3, pooler tests) comes from the distribution's packages.
# Installed when we can (root with apt-get); the code skips pooler parts without it.
system-deps:
	@if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing pgbouncer with apt-get"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null) \
	      || echo "warning: could not install pgbouncer; pooler checks will be skipped"; \
	  else echo "note: pgbouncer not installed; pooler checks will be skipped"; fi; \
	fi

demo: $(STAMP) system-deps
	$(BIN)/lambda-db demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) system-deps
	$(BIN)/pytest

test: lint typecheck pytest

bench: $(STAMP) system-deps
	$(BIN)/python -m bench

sam-build: $(STAMP)
	$(BIN)/sam build

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
