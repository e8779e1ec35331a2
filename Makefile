# The verbs a newcomer needs. Every verb installs what it needs first.
SHELL := /bin/bash
PY_BOOT ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
RUN := $(UV) run --frozen

.PHONY: setup stack migrate run test test-fast e2e chaos bench consistency lint fmt down status

$(CURDIR)/.tools/bin/uv:
	$(PY_BOOT) -m venv .tools && .tools/bin/pip install --quiet --disable-pip-version-check uv

setup: $(UV)
	$(UV) sync --frozen --all-packages

stack: setup
	$(RUN) python scripts/stack.py up

migrate: stack
	$(RUN) python scripts/migrate.py

run: migrate  ## start the stack, every service, relay and consumer in the foreground (Ctrl-C stops them)
	$(RUN) python scripts/run.py Procfile

test: stack  ## the whole suite: unit, integration, e2e and chaos, against real PostgreSQL, broker, Redis
	$(RUN) pytest

test-fast: stack
	$(RUN) pytest -m "not slow"

e2e: stack
	$(RUN) pytest tests/e2e

bench: stack  ## relay drain rate and commit->applied latency -> bench/results/latest.json
	$(RUN) python bench/run.py

lint: setup
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy --strict libs/outbox/src

fmt: setup
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

status: setup
	$(RUN) python scripts/stack.py status

down: setup  ## stop what `make stack`/`make run` started (and nothing else)
	$(RUN) python scripts/stack.py down
