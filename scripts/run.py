"""A tiny Procfile runner: starts every process, prefixes its output, stops them all together.

Each line of the Procfile is `name: command` (run by bash, so `$VARS` expand). Ctrl-C or SIGTERM stops
every process it started (SIGTERM, then SIGKILL after a grace period); so does any process exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from pathlib import Path

STATE = Path(os.environ.get("STACK_DIR", Path(__file__).resolve().parent.parent / ".stack"))

COLORS = [31, 32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96]
GRACE_SECONDS = 10.0


def parse(path: Path) -> list[tuple[str, str]]:
    procs = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, cmd = line.partition(":")
        procs.append((name.strip(), cmd.strip()))
    return procs


async def pump(name: str, color: int, width: int, stream: asyncio.StreamReader) -> None:
    prefix = (
        f"\x1b[{color}m{name.ljust(width)} |\x1b[0m " if sys.stdout.isatty() else f"{name.ljust(width)} | "
    )
    while line := await stream.readline():
        sys.stdout.write(prefix + line.decode(errors="replace"))
        sys.stdout.flush()


def local_environment() -> dict[str, str]:
    """`make run` is a local run: auth in explicit local mode with a random key-encryption key generated once
    and kept in the stack directory (0600), so the signing keys stored by earlier runs still decrypt.
    Outside `make run` auth defaults to production and refuses to start without a real key."""
    key_file = STATE / "auth-key-encryption-key"
    if not key_file.exists():
        STATE.mkdir(parents=True, exist_ok=True)
        key_file.touch(mode=0o600)
        key_file.write_text(secrets.token_urlsafe(32))
    return {
        "AUTH_ENVIRONMENT": os.environ.get("AUTH_ENVIRONMENT", "local"),
        "AUTH_KEY_ENCRYPTION_KEY": os.environ.get("AUTH_KEY_ENCRYPTION_KEY") or key_file.read_text().strip(),
    }


async def main(procfile: Path) -> int:
    procs = parse(procfile)
    width = max(len(n) for n, _ in procs)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    children: dict[str, asyncio.subprocess.Process] = {}
    pumps = []
    env = {**os.environ, **local_environment(), "PYTHONUNBUFFERED": "1"}
    for i, (name, cmd) in enumerate(procs):
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            f"exec {cmd}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
        children[name] = proc
        assert proc.stdout is not None
        pumps.append(asyncio.create_task(pump(name, COLORS[i % len(COLORS)], width, proc.stdout)))
        print(f"[run] started {name} (pid {proc.pid}): {cmd}", flush=True)
    waits = {asyncio.create_task(p.wait()): n for n, p in children.items()}
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*waits, stopper], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    for task in done:
        if task in waits:
            print(f"[run] {waits[task]} exited with {task.result()}: stopping everything", flush=True)
            code = 1
    for proc in children.values():
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in children.values())), GRACE_SECONDS)
    except TimeoutError:
        for name, proc in children.items():
            if proc.returncode is None:
                print(f"[run] {name} ignored SIGTERM for {GRACE_SECONDS}s: SIGKILL", flush=True)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
    await asyncio.gather(*pumps, return_exceptions=True)
    print("[run] all processes stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "Procfile"))))
