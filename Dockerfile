# One image for every process of the system (deploy/compose.yml): the auth, console and indexer APIs, a relay
# per service, the consumers and the migrations. Which one runs is the container's command:
#   python -m auth | python -m console | python -m indexer                     the APIs
#   outbox relay --database-url URL --name auth|console|indexer                 a relay
#   python -m console.consumer | python -m indexer.consumer                     the consumers
#   alembic -c services/<service>/alembic.ini upgrade head                      a service's migrations
# No secret is baked in: settings come from the environment at run time (the few ENV defaults below are not secret).
#
# BASE_IMAGE is an argument because some build machines cannot pull public images: any Debian-like image
# with CPython 3.11 and its venv module on PATH as python3.11 works (deploy/local/images.sh builds one).
# Written for the classic builder and BuildKit alike (no RUN --mount), so `docker-compose build` works too.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- manifests: every workspace member's pyproject.toml (and the README/LICENSE its metadata names), without
# the code, so the dependency layer below is rebuilt only when a manifest or the lock changes. Generic: a new
# member under libs/ or services/ needs no edit here.
FROM ${BASE_IMAGE} AS manifests
WORKDIR /src
COPY libs libs
COPY services services
RUN mkdir /manifests \
 && find libs services -mindepth 2 -maxdepth 2 \( -name pyproject.toml -o -name README.md -o -name LICENSE \) \
      -exec cp --parents {} /manifests/ \;

# --- build: resolve and install the locked dependencies into /app/.venv -------------------------------------
FROM ${BASE_IMAGE} AS build
ARG UV_VERSION=0.13.9
# uv from PyPI into its own virtual environment (not in the final image). PIP_INDEX_URL / UV_INDEX_URL may be
# given as build arguments for a mirror; neither is a secret and neither reaches the final stage.
ARG PIP_INDEX_URL
ARG UV_INDEX_URL
RUN python3.11 -m venv /opt/uv \
 && /opt/uv/bin/pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON=python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# `uv sync --no-dev` of the root project installs exactly what production runs: its dependencies (the
# library, servicekit and the three services, with theirs), not the dev group and not dev-only workspace
# members (test helpers).
COPY pyproject.toml uv.lock ./
COPY --from=manifests /manifests/ ./
RUN /opt/uv/bin/uv sync --frozen --no-dev --no-install-workspace --no-cache
# Then the code, installed as regular (non-editable) packages: the final stage needs no source tree.
COPY libs libs
COPY services services
RUN /opt/uv/bin/uv sync --frozen --no-dev --no-editable --no-cache
# Alembic reads each service's alembic.ini and migrations/ from the file system (not from the wheel).
RUN for d in services/*/; do \
      if [ -f "$d/alembic.ini" ]; then mkdir -p "/out/$d" && cp -r "$d/alembic.ini" "$d/migrations" "/out/$d"; fi; \
    done

# --- final: the interpreter, the virtual environment, the migrations; no uv, pip cache or build tools -------
FROM ${BASE_IMAGE}
RUN groupadd --gid 10001 app \
 && useradd --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY --from=build /out/ /app/
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json \
    OUTBOX_HEARTBEAT_FILE=/tmp/outbox-heartbeat
USER app:app
# A harmless default: the operator's CLI. Every compose service names its own command.
CMD ["outbox", "--help"]
