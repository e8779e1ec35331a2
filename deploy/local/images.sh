#!/usr/bin/env bash
# The stand-in images deploy/compose.local.yml runs, on a machine where no public image can be pulled.
#   1. tests/e2e/docker/up.sh: Debian's docker.io engine with its own data root and socket (--bridge=none
#      --iptables=false: host networking only) and the images it builds, e2e/postgres:15 and e2e/redis:7
#      (a debootstrap'ed Debian rootfs) and e2e/tansu:0.6 (the Kafka-protocol stand-in for apache/kafka);
#   2. one more debootstrap'ed rootfs (minbase + Debian bookworm's python3.11, python3.11-venv, nginx-light,
#      gettext-base, curl), imported twice:
#        compose/python:3.11-bookworm  the Dockerfile's BASE_IMAGE (for python:3.11-slim-bookworm)
#        compose/nginx:bookworm        the gateway (for nginx), with an entrypoint that renders
#                                      /etc/nginx/templates/*.template with envsubst like the official image;
#   3. compose/tansu:0.6: the Tansu binary on the Python image (for a healthcheck) standing in for apache/kafka.
# Idempotent: reuses a running engine, the rootfs and existing images. Prints the DOCKER_HOST to use.
set -euo pipefail
export E2E_DOCKER_DIR="${COMPOSE_DOCKER_DIR:-/var/tmp/outbox-compose-docker}"
DIR="$E2E_DOCKER_DIR"
SUITE="${E2E_DEBIAN_SUITE:-bookworm}"
MIRROR="${E2E_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
log() { echo "[compose-local] $*" >&2; }

SOCK="$(bash "$ROOT/tests/e2e/docker/up.sh")"
D=(docker -H "$SOCK")
have() { "${D[@]}" image inspect "$1" >/dev/null 2>&1; }

if ! have compose/python:3.11-bookworm || ! have compose/nginx:bookworm; then
  rootfs="$DIR/rootfs-python"
  if [ ! -f "$rootfs/.complete" ]; then
    log "debootstrap $SUITE (minbase + python3.11, its venv module, nginx-light, gettext-base, curl) into $rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase \
      --include=python3.11,python3.11-venv,python3-distutils,python3-pip-whl,python3-setuptools-whl,nginx-light,gettext-base,curl,ca-certificates \
      "$SUITE" "$rootfs" "$MIRROR" >"$DIR/debootstrap-python.log" 2>&1 \
      || { tail -30 "$DIR/debootstrap-python.log"; exit 1; }
    rm -rf "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"*
    # what the official images provide: `python`/`python3` on PATH, a default-site-free nginx
    ln -sf python3.11 "$rootfs/usr/bin/python"
    ln -sf python3.11 "$rootfs/usr/bin/python3"
    rm -f "$rootfs/etc/nginx/sites-enabled/default"
    touch "$rootfs/.complete"
  fi
  install -m 0755 "$HERE/nginx-entrypoint.sh" "$rootfs/docker-entrypoint.sh"
  # The stand-in trusts what this host trusts (a machine behind a TLS-inspecting proxy adds its own CA), so
  # the Dockerfile's pip and uv reach the package index from inside a build; SSL_CERT_FILE below is for uv.
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  if ! have compose/python:3.11-bookworm; then
    log "importing compose/python:3.11-bookworm"
    tar -C "$rootfs" --exclude=./.complete -c . | "${D[@]}" import \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' -c 'ENV LANG=C.UTF-8' \
      -c 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
      -c 'CMD ["python3"]' - compose/python:3.11-bookworm >/dev/null
  fi
  if ! have compose/nginx:bookworm; then
    log "importing compose/nginx:bookworm"
    tar -C "$rootfs" --exclude=./.complete -c . | "${D[@]}" import \
      -c 'ENTRYPOINT ["/docker-entrypoint.sh"]' -c 'CMD ["nginx", "-g", "daemon off;"]' \
      - compose/nginx:bookworm >/dev/null
  fi
fi
# Tansu with a Python beside it, so the broker container can have a healthcheck (the static binary alone has
# no shell): compose/tansu:0.6 = compose/python:3.11-bookworm + e2e/tansu:0.6's binary.
if ! have compose/tansu:0.6; then
  log "building compose/tansu:0.6"
  t="$(mktemp -d)"
  "${D[@]}" create --name compose-tansu-export e2e/tansu:0.6 >/dev/null
  "${D[@]}" cp compose-tansu-export:/usr/local/bin/tansu "$t/tansu"
  "${D[@]}" rm compose-tansu-export >/dev/null
  printf '%s\n' 'FROM compose/python:3.11-bookworm' 'COPY tansu /usr/local/bin/tansu' \
    'ENTRYPOINT ["/usr/local/bin/tansu"]' 'CMD ["broker"]' >"$t/Dockerfile"
  "${D[@]}" build -q -t compose/tansu:0.6 "$t" >/dev/null
  rm -rf "$t"
fi
"${D[@]}" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^(e2e|compose)/' >&2
echo "$SOCK"
