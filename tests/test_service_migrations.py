"""Each service's migrations build exactly what its models (and the outbox library) describe, and undo it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from testsupport import recreate_database

ROOT = Path(__file__).resolve().parent.parent


def alembic(service: str, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    ini = ROOT / "services" / service / "alembic.ini"
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini), *args],
        cwd=ini.parent,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("service", ["auth", "console", "indexer"])
def test_migrations_match_models_and_downgrade_cleanly(service: str) -> None:
    url = recreate_database(f"{service}_migrations_check_{os.environ['TEST_RUN_ID']}")
    upgraded = alembic(service, url, "upgrade", "head")
    assert upgraded.returncode == 0, upgraded.stderr
    check = alembic(service, url, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr
    down = alembic(service, url, "downgrade", "base")
    assert down.returncode == 0, down.stderr
    again = alembic(service, url, "upgrade", "head")
    assert again.returncode == 0, again.stderr
