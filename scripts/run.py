"""A small Procfile runner: starts every process, prefixes its output, stops them all together.

Each line of the Procfile is `name: command` (run by bash, so `$VARS` expand). Ctrl-C or SIGTERM stops
every process it started (SIGTERM, then SIGKILL after a grace period); so does any process exiting.

No child outlives the runner, however the runner ends. Each child gets its own process group (so a stop
reaches the whole group) and a parent-death signal (PR_SET_PDEATHSIG: the kernel sends it SIGTERM when the
runner dies, even by SIGKILL, which no handler of ours could catch). A process group alone would not do:
nothing signals the group when its parent is SIGKILLed. The runner asks the same of its own parent (make,
uv), and records every pid in the stack directory so that `make down` can stop whatever is still alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("STACK_DIR", ROOT / ".stack"))
PIDS = STATE / "run"
COLORS = [31, 32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96]
GRACE_SECONDS = 10.0
PR_SET_PDEATHSIG = 1


def parse(path: Path) -> list[tuple[str, str]]:
    procs = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, cmd = line.partition(":")
        procs.append((name.strip(), cmd.strip()))
    return procs


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux); close the race where the
    parent died before the request by checking the parent is still the same."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot: with the pid, it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def record(name: str, pid: int) -> None:
    PIDS.mkdir(parents=True, exist_ok=True)
    (PIDS / f"{name}.pid").write_text(f"{pid} {start_time(pid)}\n")


def local_environment() -> dict[str, str]:
    """`make run` is a local run: auth in explicit local mode with a random key-encryption key generated once
    and kept in the stack directory (0600), so the signing keys stored by earlier runs still decrypt.
    Outside `make run` auth defaults to production and refuses to start without a real key. The services
    trust forwarded client addresses only from the gateway's source address (see deploy/gateway)."""
    key_file = STATE / "auth-key-encryption-key"
    if not key_file.exists():
        STATE.mkdir(parents=True, exist_ok=True)
        key_file.touch(mode=0o600)
        key_file.write_text(secrets.token_urlsafe(32))
    bin_dir = str(Path(sys.executable).parent)  # the project's virtual environment: no `uv` needed on PATH
    return {
        "AUTH_ENVIRONMENT": os.environ.get("AUTH_ENVIRONMENT", "local"),
        "AUTH_KEY_ENCRYPTION_KEY": os.environ.get("AUTH_KEY_ENCRYPTION_KEY") or key_file.read_text().strip(),
        "GATEWAY_SOURCE_ADDRESS": os.environ.get("GATEWAY_SOURCE_ADDRESS", "127.0.0.2"),
        "FORWARDED_ALLOW_IPS": os.environ.get(
            "FORWARDED_ALLOW_IPS", os.environ.get("GATEWAY_SOURCE_ADDRESS", "127.0.0.2")
        ),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }


async def pump(name: str, color: int, width: int, stream: asyncio.StreamReader) -> None:
    prefix = (
        f"\x1b[{color}m{name.ljust(width)} |\x1b[0m " if sys.stdout.isatty() else f"{name.ljust(width)} | "
    )
    while line := await stream.readline():
        sys.stdout.write(prefix + line.decode(errors="replace"))
        sys.stdout.flush()


async def stop_all(children: dict[str, asyncio.subprocess.Process]) -> None:
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
        await asyncio.gather(*(p.wait() for p in children.values()))


async def main(procfile: Path) -> int:
    die_with_parent(os.getppid())
    procs = parse(procfile)
    width = max(len(n) for n, _ in procs)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    for stale in PIDS.glob("*.pid") if PIDS.is_dir() else ():
        stale.unlink()
    record("runner", os.getpid())
    env = {**os.environ, **local_environment()}
    me = os.getpid()
    children: dict[str, asyncio.subprocess.Process] = {}
    pumps = []
    for i, (name, cmd) in enumerate(procs):
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            f"exec {cmd}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: die_with_parent(me),
            env=env,
        )
        children[name] = proc
        record(name, proc.pid)
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
    await stop_all(children)
    await asyncio.gather(*pumps, return_exceptions=True)
    for pidfile in PIDS.glob("*.pid"):
        pidfile.unlink()
    print("[run] all processes stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "Procfile"))))
