# The verbs a newcomer needs. Every verb installs what it needs first.
SHELL := /bin/bash
PY_BOOT ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
RUN := $(UV) run --frozen

.PHONY: catalogue reconcile rebuild-index setup stack migrate run stop restart ps mail test test-fast e2e chaos bench bench-micro bench-api bench-peers consistency audit lint fmt down status e2e-docker

$(CURDIR)/.tools/bin/uv:
	$(PY_BOOT) -m venv .tools && .tools/bin/pip install --quiet --disable-pip-version-check uv

# Bytecode compiled once at install: where PYTHONDONTWRITEBYTECODE is set (as on the machines this is built
# on) every process would otherwise recompile its imports from source at each start (measured: 1.3 s -> 0.5 s
# for a service's imports), and the suites start hundreds of processes. The workspace's own sources too: an
# edited file's stale .pyc is simply ignored.
setup: $(UV)
	$(UV) sync --frozen --all-packages --compile-bytecode --quiet
	$(UV) run --frozen python -m compileall -q -j 0 libs services scripts >/dev/null

stack: setup
	$(RUN) python scripts/stack.py up

migrate: stack
	$(RUN) python scripts/migrate.py

# Every process records its spans into one file, size-capped with rotated backups (libs/outbox span_file.py:
# OTEL_SPANS_FILE_MAX_BYTES, OTEL_SPANS_FILE_BACKUPS); `outbox trace` reads it. OTEL_SPANS_FILE= turns it off.
SPANS_FILE_DEFAULT = $${STACK_DIR:-$(CURDIR)/.stack}/spans.jsonl
run: migrate  ## the stack, the gateway on :8000, Prometheus on :9090, every service, relay and consumer (Ctrl-C stops them); ONLY=a,b: those Procfile names only
	$(RUN) python scripts/gateway.py ensure
	$(RUN) python scripts/prometheus.py ensure
	OTEL_SPANS_FILE="$${OTEL_SPANS_FILE-$(SPANS_FILE_DEFAULT)}" $(RUN) python scripts/run.py Procfile $(if $(ONLY),--only $(ONLY))

# Talk to the running `make run` (scripts/run.py's control socket under .stack/run/): standard library only,
# so no setup step and no uv; the rest keeps running.
stop:  ## P=name[,name]: stop those Procfile processes (on purpose: the others keep running)
	@$(PY_BOOT) scripts/run.py stop $(P)

restart:  ## P=name[,name]: stop (if running) and start again, from the Procfile's current line
	@$(PY_BOOT) scripts/run.py restart $(P)

ps:  ## what `make run` runs: each Procfile process, running (pid) or stopped
	@$(PY_BOOT) scripts/run.py status

mail:  ## the latest mail the local SMTP sink caught (.stack/mail/); TO=address: the latest to that address
	@$(PY_BOOT) scripts/mail_sink.py --latest $(if $(TO),--to '$(TO)')

test: stack  ## the whole suite: unit, integration, e2e and chaos, against real PostgreSQL, broker, Redis
	$(RUN) pytest --durations=15

test-fast: stack
	$(RUN) pytest -m "not slow"

e2e: stack
	$(RUN) pytest tests/e2e

bench: stack  ## relay drain rate and commit->applied latency -> bench/results/latest.json
	$(RUN) python -m bench.run

bench-micro: stack  ## the unit costs behind CPU per event: a statement through SQLAlchemy vs the driver, an offset commit, an idle consumer -> bench/results/micro.json
	$(RUN) python -m bench.micro

bench-api: setup  ## per-route request cost vs a bare FastAPI app, enable -> searchable (needs `make run` up) -> bench/results/api.json
	$(RUN) python -m bench.api

bench-peers: stack  ## libs/outbox vs faststream-outbox, same PostgreSQL and broker -> bench/results/peers.json
	$(RUN) --group peers python -m bench.peers.run

# Known vulnerabilities in the locked dependencies (pip-audit asks PyPI's JSON API; OSV with AUDIT_SERVICE=osv).
# Not part of `make lint`: neither service is reachable from the machines this project is built on (their
# package mirror serves the simple index only), where every package would be reported "could not be audited".
AUDIT_SERVICE ?= pypi
audit: setup
	$(UV) export --frozen --format requirements-txt --no-hashes --all-packages --no-emit-workspace --no-header > .tools/requirements-audit.txt
	$(RUN) pip-audit -r .tools/requirements-audit.txt --disable-pip --no-deps --strict -s $(AUDIT_SERVICE)

lint: setup
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy --strict libs/outbox/src libs/servicekit/src libs/contracts/src libs/testsupport/src services/auth/src services/console/src services/indexer/src

fmt: setup
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

status: setup
	$(RUN) python scripts/stack.py status

down: setup  ## stop what `make stack`/`make run` started (and nothing else)
	$(RUN) python scripts/stack.py down

# e2e on the testcontainers back end, on a machine where no image can be pulled: Debian's docker.io engine
# (own data root and socket, --bridge=none --iptables=false), images built locally, host networking only.
E2E_DOCKER_DIR ?= /var/tmp/outbox-e2e-docker
E2E_DOCKER_TESTS ?= tests/e2e/test_infra.py tests/e2e/test_consistency.py
e2e-docker: setup  ## e2e infra tests with E2E_BACKEND=docker (see tests/e2e/README.md)
	sock=$$(E2E_DOCKER_DIR=$(E2E_DOCKER_DIR) bash tests/e2e/docker/up.sh) && \
	DOCKER_HOST=$$sock E2E_BACKEND=docker E2E_DOCKER_NETWORK=host TESTCONTAINERS_RYUK_DISABLED=true \
	E2E_PG_IMAGE=e2e/postgres:15 E2E_REDIS_IMAGE=e2e/redis:7 E2E_KAFKA_IMAGE=e2e/tansu:0.6 \
	$(RUN) pytest -s $(E2E_DOCKER_TESTS)

consistency: stack  ## the seed's dual write vs the outbox under the same crashes -> bench/results/consistency.json
	$(RUN) python -m bench.consistency.run

reconcile: setup  ## does the search index agree with console? REPAIR=1 re-announces drifted documents
	$(RUN) python scripts/projection.py reconcile $(if $(REPAIR),--repair)

catalogue: setup  ## regenerate the event catalogue (docs/events: AsyncAPI 3.0 + a JSON Schema per event type) from libs/contracts
	$(RUN) python scripts/catalogue.py

rebuild-index: setup  ## rebuild the indexer's projection from console's current state (resumable)
	$(RUN) python scripts/projection.py rebuild

# deploy/compose.yml: the production-shaped topology (Apache Kafka, a PostgreSQL per service, Redis, the gateway,
# Jaeger; every process of ours from the root Dockerfile). Not part of `make test`. README "Deploy".
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
COMPOSE_ENV ?= deploy/.env
COMPOSE_FILES ?= -f deploy/compose.yml
COMPOSE_PROJECT ?= outbox-reference
# The app image's tag: the project's version (compose.yml's default is checked equal to it).
APP_VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)
DC = APP_VERSION=$(APP_VERSION) $(COMPOSE) -p $(COMPOSE_PROJECT) --env-file $(COMPOSE_ENV) $(COMPOSE_FILES)
.PHONY: compose-up compose-down compose-check compose-smoke compose-secrets

compose-secrets: setup  ## create the missing secret files in deploy/secrets/ (random; never committed) and Redis's ACL file
	$(RUN) python deploy/credentials.py

compose-up:  ## build the image and start the topology (needs deploy/secrets/: make compose-secrets; deploy/.env: cp deploy/.env.example)
	@test -f $(COMPOSE_ENV) || { echo "$(COMPOSE_ENV) is missing: cp deploy/.env.example $(COMPOSE_ENV) (settings only, no secret)"; exit 1; }
	python3 deploy/credentials.py --check
	$(DC) up -d --build

compose-down:  ## stop and remove the topology's containers (volumes stay; add `-v` by hand to drop the data)
	@test -f $(COMPOSE_ENV) || { echo "$(COMPOSE_ENV) is missing"; exit 1; }
	$(DC) down

# The file checks first (no Docker: also part of `make test`): secrets, Kafka security, limits, log rotation,
# exact versions, bootstrap lists, the gateway's resolver, Prometheus/Alertmanager/Grafana configuration; then
# `compose config` and the image build, which need the compose tool and an engine.
COMPOSE_TESTS = tests/test_compose_secrets.py tests/test_compose_kafka.py tests/test_compose_running.py tests/test_compose_monitoring.py
compose-check: setup  ## the compose files' checks (secrets, limits, versions, monitoring config), compose config, build every service image
	$(RUN) pytest -q -p no:cacheprovider $(COMPOSE_TESTS)
	APP_VERSION=$(APP_VERSION) $(RUN) python deploy/composectl.py check

compose-smoke: setup  ## the whole topology on locally built stand-ins (deploy/compose.local.yml): quick start, health, teardown
	$(RUN) python deploy/composectl.py smoke
