"""Apply every service's Alembic migrations (each service owns its database): services/*/alembic.ini.

They run as the service's owner role (the migrations' env.py defaults to `<service>_owner`, or DATABASE_URL)
and grant `<service>_app`, the role the service's processes use, what it needs (servicekit.pgroles).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

for ini in sorted(ROOT.glob("services/*/alembic.ini")):
    service = ini.parent.name
    print(f"[migrate] {service}: upgrade head", flush=True)
    env = {**os.environ, "DATABASE_APP_ROLE": f"{service}_app"}
    subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini), "upgrade", "head"],
        check=True,
        cwd=ini.parent,
        env=env,
    )
