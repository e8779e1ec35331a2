"""scripts/run.py (`make run`, `make stop|restart P=`, `make run ONLY=`) on real processes: small shell
loops in a Procfile of the test's own, a stack directory of its own (STACK_DIR), the runner started as
`make run` starts it. A process stopped on purpose stops alone; one that exits on its own stops everything;
no child outlives the runner, restarted ones included, however the runner ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testsupport.broker import poll_until

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "scripts" / "run.py"
# Each process writes its pid to a file and sleeps: what the test checks is whether that pid is alive.
PROCFILE = """\
# a comment
alpha: sh -c 'echo $$ > $OUT/alpha; exec sleep 600'
beta: sh -c 'echo $$ > $OUT/beta; exec sleep 600'
gamma: sh -c 'echo $$ > $OUT/gamma; exec sleep 600'
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class Run:
    directory: Path
    env: dict[str, str]
    proc: subprocess.Popen[str]

    def pid(self, name: str) -> int:
        return int((self.directory / "out" / name).read_text())

    def wait_started(self, *names: str) -> None:
        poll_until(
            lambda: all((f := self.directory / "out" / n).exists() and f.read_text().strip() for n in names),
            timeout=30,
            what=f"{names} to start",
        )

    def ctl(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(RUN), *argv], env=self.env, capture_output=True, text=True, timeout=60
        )

    def make(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "-s", "-C", str(ROOT), *argv], env=self.env, capture_output=True, text=True, timeout=60
        )

    def output(self) -> str:
        return (self.directory / "runner.log").read_text()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def starter(*argv: str, procfile: str = PROCFILE) -> Run:
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "Procfile").write_text(procfile)
        env = {**os.environ, "STACK_DIR": str(tmp_path / "stack"), "OUT": str(tmp_path / "out")}
        log = open(tmp_path / "runner.log", "w")  # noqa: SIM115 - the runner owns it
        proc = subprocess.Popen(
            [sys.executable, str(RUN), str(tmp_path / "Procfile"), *argv],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        run = Run(tmp_path, env, proc)
        runs.append(run)
        return run

    yield starter
    for run in runs:
        if run.proc.poll() is None:
            os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait(timeout=30)


def test_stop_one_process_the_others_keep_running_then_restart_it(start: Callable[..., Run]) -> None:
    run = start()
    run.wait_started("alpha", "beta", "gamma")
    alpha, beta, gamma = run.pid("alpha"), run.pid("beta"), run.pid("gamma")

    stopped = run.make("stop", "P=beta")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stopped beta" in stopped.stdout
    assert not alive(beta) and alive(alpha) and alive(gamma)
    assert run.proc.poll() is None, run.output()
    assert not (run.directory / "stack" / "run" / "beta.pid").exists()
    status = run.ctl("status")
    assert status.returncode == 0
    assert [line.split()[:2] for line in status.stdout.splitlines()] == [
        ["alpha", "running"],
        ["beta", "stopped"],
        ["gamma", "running"],
    ]

    (run.directory / "out" / "beta").unlink()
    restarted = run.make("restart", "P=beta")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    run.wait_started("beta")
    assert alive(run.pid("beta")) and run.pid("beta") != beta
    assert alive(alpha) and alive(gamma) and run.proc.poll() is None

    # A restart of a running process replaces it; the Procfile's current line is what starts.
    (run.directory / "Procfile").write_text(
        PROCFILE.replace("alpha: sh -c '", "alpha: sh -c 'echo changed >&2; ")
    )
    (run.directory / "out" / "alpha").unlink()
    assert run.ctl("restart", "alpha").returncode == 0
    run.wait_started("alpha")
    assert not alive(alpha) and alive(run.pid("alpha"))
    poll_until(lambda: "alpha | changed" in run.output(), timeout=10, what="the edited line to run")

    # Ctrl-C (SIGINT to the runner) stops everything it runs, restarted processes included.
    new_alpha, new_beta = run.pid("alpha"), run.pid("beta")
    os.kill(run.proc.pid, signal.SIGINT)
    assert run.proc.wait(timeout=30) == 0, run.output()
    assert not any(alive(p) for p in (new_alpha, new_beta, gamma))
    assert not list((run.directory / "stack" / "run").glob("*.pid"))


def test_only_starts_a_subset_and_restart_starts_one_left_out(start: Callable[..., Run]) -> None:
    run = start("--only", "alpha,gamma")
    run.wait_started("alpha", "gamma")
    assert "not started (ONLY)" in run.ctl("status").stdout
    assert not (run.directory / "out" / "beta").exists()
    assert "[run] started beta" not in run.output()

    assert run.make("restart", "P=beta").returncode == 0
    run.wait_started("beta")
    assert alive(run.pid("beta")) and alive(run.pid("alpha"))
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=30) == 0


def test_only_with_an_unknown_name_refuses_to_start(start: Callable[..., Run]) -> None:
    run = start("--only", "alpha,delta")
    assert run.proc.wait(timeout=30) == 2
    assert "ONLY names delta: not in Procfile (alpha, beta, gamma)" in run.output()
    assert not (run.directory / "out" / "alpha").exists()


def test_a_process_exiting_on_its_own_stops_everything(start: Callable[..., Run]) -> None:
    run = start()
    run.wait_started("alpha", "beta", "gamma")
    pids = [run.pid(n) for n in ("alpha", "beta", "gamma")]
    os.kill(pids[1], signal.SIGKILL)  # beta "crashes"
    assert run.proc.wait(timeout=30) == 1
    assert "beta exited with -9 on its own: stopping everything" in run.output()
    assert not any(alive(p) for p in pids)


def test_control_errors_are_one_line_and_nonzero(start: Callable[..., Run], tmp_path: Path) -> None:
    env = {**os.environ, "STACK_DIR": str(tmp_path / "nothing")}
    absent = subprocess.run(
        [sys.executable, str(RUN), "stop", "alpha"], env=env, capture_output=True, text=True, timeout=30
    )
    assert absent.returncode == 1 and "make run is not running here" in absent.stderr

    run = start()
    run.wait_started("alpha")
    unknown = run.make("stop", "P=delta")
    assert unknown.returncode != 0
    assert "error: no process delta in Procfile: alpha, beta, gamma" in unknown.stderr
    missing = run.make("stop")
    assert missing.returncode != 0 and "usage: make stop P=NAME" in missing.stderr
    assert run.proc.poll() is None

    # A second runner on the same stack directory refuses, naming the first; the first keeps running.
    second = subprocess.run(
        [sys.executable, str(RUN), str(run.directory / "Procfile")],
        env=run.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1 and "already running here" in second.stdout
    assert run.proc.poll() is None and alive(run.pid("alpha"))


def test_a_sigkilled_runner_takes_restarted_children_with_it(start: Callable[..., Run]) -> None:
    run = start()
    run.wait_started("alpha", "beta", "gamma")
    (run.directory / "out" / "gamma").unlink()
    assert run.ctl("restart", "gamma").returncode == 0
    run.wait_started("gamma")
    pids = [run.pid(n) for n in ("alpha", "beta", "gamma")]
    os.kill(run.proc.pid, signal.SIGKILL)
    run.proc.wait(timeout=30)
    poll_until(lambda: not any(alive(p) for p in pids), timeout=30, what="every child to die with the runner")


def test_make_run_passes_only_to_the_runner() -> None:
    """The Makefile's wiring, read with `make -n` (nothing runs): ONLY= reaches the runner, absent it starts all."""

    def planned(*argv: str) -> str:
        done = subprocess.run(["make", "-n", "-C", str(ROOT), "run", *argv], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return next(line for line in done.stdout.splitlines() if "scripts/run.py" in line)

    assert planned("ONLY=auth,auth-relay").endswith("scripts/run.py Procfile --only auth,auth-relay")
    assert planned().endswith("scripts/run.py Procfile ")
