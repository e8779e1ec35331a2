"""`make compose-check` refuses any secret the compose files hold other than as a file (deploy/credentials.py),
and `make compose-secrets` creates the files compose mounts."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from deploy.credentials import FILES, generate, missing, secret_findings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


@pytest.mark.parametrize("name", ["compose.yml", "compose.kafka-cluster.yml", "compose.local.yml"])
def test_the_compose_files_hold_no_secret(name: str) -> None:
    assert secret_findings(yaml.safe_load((DEPLOY / name).read_text())) == []


BAD = """
services:
  api:
    environment:
      AUTH_KEY_ENCRYPTION_KEY_FILE: /run/secrets/kek         # fine: a file
      REDIS_PASSWORD: hunter2                                # a value
      PGPASSWORD: ${DB_PASSWORD:-changeme}                   # interpolated, with a default
      AUTH_REDIS_URL: redis://auth:hunter2@redis:6379/0      # credentials in a URL
  worker:
    environment: ["API_TOKEN=abc", "LOG_LEVEL=INFO"]
  redis:
    command: ["redis-server", "--requirepass", "hunter2"]
    healthcheck:
      test: ["CMD-SHELL", "redis-cli -a x AUTH hunter2 ping"]
secrets:
  kek:
    file: ${SECRETS_DIR:-./secrets}/kek                      # fine: a file, its directory may default
  from_env:
    environment: KEK
"""


def test_every_way_a_secret_can_hide_in_a_compose_file_is_found() -> None:
    findings = secret_findings(yaml.safe_load(BAD))
    assert findings == sorted(
        [
            "${DB_PASSWORD}: a secret interpolated from the environment or a default",
            "secrets.from_env: not a file (environment or external secrets are not allowed here)",
            "services.api.environment.AUTH_REDIS_URL: credentials inside a URL",
            "services.api.environment.PGPASSWORD: a secret as an environment value",
            "services.api.environment.REDIS_PASSWORD: a secret as an environment value",
            "services.redis.command: a secret on a command line",
            "services.redis.healthcheck: a secret on a command line",
            "services.worker.environment.API_TOKEN: a secret as an environment value",
        ]
    ), findings


def test_compose_secrets_creates_every_file_once_and_the_acl_without_passwords(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    assert missing(directory) == list(FILES)
    created = generate(directory)
    assert missing(directory) == [] and len(created) == len(FILES) - 1  # the ACL file is derived, not counted
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    # 0644: a compose secret is a bind mount read by the container's user; the Kafka CA's key is mounted nowhere
    assert all(
        stat.S_IMODE((directory / name).stat().st_mode) == 0o644 for name in FILES if name != "kafka-ca.key"
    )
    assert stat.S_IMODE((directory / "kafka-ca.key").stat().st_mode) == 0o600
    before = (directory / "redis_console_password").read_text()
    assert generate(directory) == [] and (directory / "redis_console_password").read_text() == before
    acl = (directory / "redis-users.acl").read_text()
    assert before.strip() not in acl and "user console on #" in acl
