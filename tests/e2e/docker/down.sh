#!/usr/bin/env bash
# Stop the Docker engine that up.sh started (by its pid file) and remove leftover e2e containers.
# Images and the debootstrap'ed rootfs stay in $E2E_DOCKER_DIR for the next run (rm -rf it to reclaim ~1 GB).
set -euo pipefail
DIR="${E2E_DOCKER_DIR:-/var/tmp/outbox-e2e-docker}"
SOCK="unix://$DIR/docker.sock"
if docker -H "$SOCK" info >/dev/null 2>&1; then
  ids="$(docker -H "$SOCK" ps -aq)"
  [ -n "$ids" ] && docker -H "$SOCK" rm -f $ids >/dev/null
fi
if [ -f "$DIR/dockerd.pid" ]; then
  pid="$(cat "$DIR/dockerd.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
fi
echo "[e2e-docker] engine stopped" >&2
