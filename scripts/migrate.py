"""Apply every service's Alembic migrations (each service owns its database): services/*/alembic.ini."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

for ini in sorted(ROOT.glob("services/*/alembic.ini")):
    print(f"[migrate] {ini.parent.name}: upgrade head", flush=True)
    subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini), "upgrade", "head"], check=True, cwd=ini.parent
    )
