"""A small Procfile runner: starts the processes, prefixes their output, and stops, restarts or starts one
on request while the others keep running.

    python scripts/run.py [Procfile] [--only a,b]    # run (make run [ONLY=a,b]); Ctrl-C stops everything
    python scripts/run.py stop|restart NAME[,NAME]   # ask the running runner (make stop|restart P=NAME)
    python scripts/run.py status                     # what it runs (make ps)

Each line of the Procfile is `name: command` (run by bash, so `$VARS` expand). Ctrl-C or SIGTERM stops
every process it started (SIGTERM, then SIGKILL after a grace period). A process stopped on purpose (`stop`,
or `restart`, which re-reads its Procfile line) stops alone; a process that exits on its own still stops
everything, naming it: a crash is never left unnoticed in the scrolling output.

The runner listens on a Unix socket, `$STACK_DIR/run/control.sock` (0600), where the client side of this
same script sends one line (`stop NAME`) and reads the answer; the client needs nothing but Python's
standard library. (Why not honcho or supervisord: honcho cannot stop or restart one process of a running
instance; supervisord can, but as a daemon whose children get no parent-death signal, so a SIGKILLed
supervisord leaves them running, and it would be one more dependency for ~100 lines here.)

No child outlives the runner, however the runner ends. Each child gets its own process group (so a stop
reaches the whole group) and a parent-death signal (PR_SET_PDEATHSIG: the kernel sends it SIGTERM when the
runner dies, even by SIGKILL, which no handler of ours could catch). A process group alone would not do:
nothing signals the group when its parent is SIGKILLed. A process restarted later is started the same way.
The runner asks the same of its own parent (make, uv), and records every pid in the stack directory so that
`make down` can stop whatever is still alive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import secrets
import signal
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("STACK_DIR", ROOT / ".stack"))
PIDS = STATE / "run"
CONTROL = PIDS / "control.sock"
COLORS = [31, 32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96]
GRACE_SECONDS = 10.0
PR_SET_PDEATHSIG = 1
VERBS = ("stop", "restart", "status")


def parse(path: Path) -> dict[str, str]:
    procs: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, cmd = line.partition(":")
        procs[name.strip()] = cmd.strip()
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


async def pump(prefix: str, stream: asyncio.StreamReader) -> None:
    while line := await stream.readline():
        sys.stdout.write(prefix + line.decode(errors="replace"))
        sys.stdout.flush()


async def terminate(procs: list[tuple[str, asyncio.subprocess.Process]]) -> None:
    """SIGTERM each process's group, SIGKILL what is still there after the grace period."""
    for _, proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.gather(*(p.wait() for _, p in procs)), GRACE_SECONDS)
    except TimeoutError:
        for name, proc in procs:
            if proc.returncode is None:
                print(f"[run] {name} ignored SIGTERM for {GRACE_SECONDS}s: SIGKILL", flush=True)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.gather(*(p.wait() for _, p in procs))


class Runner:
    def __init__(self, procfile: Path, env: dict[str, str]) -> None:
        self.procfile = procfile
        self.env = env
        names = list(parse(procfile))
        self.width = max(len(n) for n in names)
        self.colors = {n: COLORS[i % len(COLORS)] for i, n in enumerate(names)}
        self.children: dict[str, asyncio.subprocess.Process] = {}
        self.stopped: dict[str, str] = {}  # name -> why it is not running (stopped on purpose, ...)
        self.tasks: set[asyncio.Task[None]] = set()
        self.done = asyncio.Event()
        self.code = 0
        self.lock = asyncio.Lock()  # one control command at a time

    def spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def prefix(self, name: str) -> str:
        label = f"{name.ljust(self.width)} |"
        return f"\x1b[{self.colors.get(name, 0)}m{label}\x1b[0m " if sys.stdout.isatty() else f"{label} "

    async def start(self, name: str) -> str:
        cmd = parse(self.procfile).get(name)  # the current line: a restart picks up an edited Procfile
        if cmd is None:
            return f"error: no process {name!r} in {self.procfile.name}"
        me = os.getpid()
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            f"exec {cmd}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: die_with_parent(me),
            env=self.env,
        )
        self.children[name] = proc
        self.stopped.pop(name, None)
        record(name, proc.pid)
        assert proc.stdout is not None
        self.spawn_task(pump(self.prefix(name), proc.stdout))
        self.spawn_task(self.watch(name, proc))
        print(f"[run] started {name} (pid {proc.pid}): {cmd}", flush=True)
        return f"started {name} (pid {proc.pid})"

    async def watch(self, name: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self.children.get(name) is not proc or self.done.is_set():
            return  # stopped on purpose (or replaced by a restart), or everything is stopping anyway
        print(
            f"[run] {name} exited with {code} on its own: stopping everything "
            f"(`make stop P={name}` stops one process without this)",
            flush=True,
        )
        self.code = 1
        self.done.set()

    async def stop(self, name: str, why: str = "stopped") -> str:
        proc = self.children.pop(name, None)
        if proc is None:
            return f"{name} is not running"
        await terminate([(name, proc)])
        (PIDS / f"{name}.pid").unlink(missing_ok=True)
        self.stopped[name] = why
        print(
            f"[run] {why} {name} (pid {proc.pid}, exit {proc.returncode}); the others keep running",
            flush=True,
        )
        return f"stopped {name} (pid {proc.pid}, exit {proc.returncode})"

    def status(self) -> list[str]:
        lines = []
        for name in parse(self.procfile):
            if (proc := self.children.get(name)) is not None:
                lines.append(f"{name:<{self.width}}  running  pid {proc.pid}")
            else:
                lines.append(f"{name:<{self.width}}  {self.stopped.get(name, 'not started')}")
        return lines

    async def command(self, line: str) -> tuple[int, list[str]]:
        verb, _, arg = line.strip().partition(" ")
        if verb == "status":
            return 0, self.status()
        names = [n for n in arg.replace(",", " ").split() if n]
        known = parse(self.procfile)
        if verb not in VERBS or not names:
            return 2, [f"error: expected `stop|restart NAME[,NAME]` or `status`, got {line.strip()!r}"]
        if unknown := [n for n in names if n not in known]:
            return 2, [f"error: no process {', '.join(unknown)} in {self.procfile.name}: {', '.join(known)}"]
        async with self.lock:
            if self.done.is_set():
                return 1, ["error: the runner is stopping"]
            out = []
            for name in names:
                if verb in ("stop", "restart") and name in self.children:
                    out.append(await self.stop(name, "stopped" if verb == "stop" else "restarting"))
                elif verb == "stop":
                    out.append(f"{name} was not running")
                if verb == "restart":
                    out.append(await self.start(name))
            return 0, out

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            code, lines = await self.command((await reader.readline()).decode(errors="replace"))
            writer.write("".join(f"{line}\n" for line in [*lines, f"exit {code}"]).encode())
            await writer.drain()
        finally:
            writer.close()


def runner_answers() -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(CONTROL))
        except OSError:
            return False
    return True


async def run(procfile: Path, only: list[str] | None) -> int:
    die_with_parent(os.getppid())
    names = list(parse(procfile))
    if unknown := [n for n in only or () if n not in names]:
        print(
            f"[run] ONLY names {', '.join(unknown)}: not in {procfile.name} ({', '.join(names)})", flush=True
        )
        return 2
    if runner_answers():
        print(f"[run] make run is already running here ({CONTROL} answers): make down stops it", flush=True)
        return 1
    loop = asyncio.get_running_loop()
    runner = Runner(procfile, {**os.environ, **local_environment()})
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, runner.done.set)
    for stale in PIDS.glob("*.pid") if PIDS.is_dir() else ():
        stale.unlink()
    record("runner", os.getpid())
    CONTROL.unlink(missing_ok=True)
    server = await asyncio.start_unix_server(runner.serve, path=str(CONTROL))
    CONTROL.chmod(0o600)
    for name in names:
        if only is None or name in only:
            await runner.start(name)
        else:
            runner.stopped[name] = "not started (ONLY)"
    await runner.done.wait()
    server.close()
    CONTROL.unlink(missing_ok=True)
    async with runner.lock:  # a restart under way finishes first, so its process is stopped too
        await terminate(list(runner.children.items()))
    await asyncio.gather(*runner.tasks, return_exceptions=True)
    for pidfile in PIDS.glob("*.pid"):
        pidfile.unlink()
    print("[run] all processes stopped", flush=True)
    return runner.code


def control(verb: str, names: list[str]) -> int:
    """The client side: one line to the runner's socket, its answer printed; the exit code is the runner's."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(CONTROL))
        except OSError:
            print(f"make run is not running here (nothing answers on {CONTROL})", file=sys.stderr)
            return 1
        sock.sendall(f"{verb} {','.join(names)}\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    *lines, last = answer.decode().rstrip("\n").split("\n")
    for line in lines:
        print(line, file=sys.stderr if line.startswith("error:") else sys.stdout)
    return int(last.removeprefix("exit ")) if last.startswith("exit ") else 1


def main(argv: list[str]) -> int:
    if argv and argv[0] in VERBS:
        names = [n for arg in argv[1:] for n in arg.split(",") if n]
        if argv[0] != "status" and not names:
            print(f"usage: make {argv[0]} P=NAME[,NAME]  (the Procfile's names)", file=sys.stderr)
            return 2
        return control(argv[0], names)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("procfile", nargs="?", type=Path, default=ROOT / "Procfile")
    parser.add_argument("--only", default="", help="comma-separated Procfile names to start (default: all)")
    args = parser.parse_args(argv)
    only = [n for n in args.only.split(",") if n] or None
    return asyncio.run(run(args.procfile, only))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
