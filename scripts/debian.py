"""Installing a Debian package a local verb or test needs (nginx, prometheus, prometheus-alertmanager,
docker-compose), the one way: only as root with apt-get, `apt-get update` only when the install first fails,
and never leaving the package's own system service started or enabled (`make run` runs its own).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

POLICY = Path("/usr/sbin/policy-rc.d")  # exit 101: invoke-rc.d starts no service during the install


def can_install() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def install(package: str, *, service: str | None = None) -> bool:
    """`apt-get install --no-install-recommends package`; True when it succeeded. `service`: the systemd unit
    the package enables, disabled again where systemd runs."""
    if not can_install():
        return False
    print(f"[setup] installing Debian's {package} (not as a system service)", flush=True)
    added_policy = not POLICY.exists()
    if added_policy:
        POLICY.write_text("#!/bin/sh\nexit 101\n")
        POLICY.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def ok(*argv: str) -> bool:
        return (
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env).returncode
            == 0
        )

    install = ("apt-get", "install", "-y", "--no-install-recommends", package)
    try:
        done = ok(*install) or (ok("apt-get", "update") and ok(*install))
    finally:
        if added_policy:
            POLICY.unlink()
    if done and service and shutil.which("systemctl"):
        ok("systemctl", "disable", "--now", service)
    return done
