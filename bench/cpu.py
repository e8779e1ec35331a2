"""CPU seconds per part of the system, read from /proc: what one event costs end to end.

PostgreSQL is counted as its whole server (every live `postgres` process plus what the postmaster has
reaped from exited backends), the broker as its process, the relay and the consumer as theirs. Run the
bench on an otherwise quiet machine: the server's CPU then is the bench's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may hold spaces: fields start after its closing parenthesis.
    return raw[raw.rindex(")") + 2 :].split()


def process_cpu_s(pid: int, *, reaped_children: bool = False) -> float:
    """utime + stime of `pid` (all its threads), plus its reaped children's when asked; 0 once it is gone."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def _pids_named(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
    return found


def postgres_cpu_s() -> float:
    pids = _pids_named("postgres")
    if not pids:
        return 0.0
    parents = {pid: (_stat(pid) or ["", "0"])[1] for pid in pids}
    postmasters = [pid for pid, ppid in parents.items() if int(ppid) not in parents]
    return sum(process_cpu_s(pid, reaped_children=pid in postmasters) for pid in pids)


def broker_cpu_s() -> float:
    return sum(process_cpu_s(pid) for pid in _pids_named("tansu"))


@dataclass
class CpuMeter:
    """Snapshots of CPU seconds by part; `since(start)` gives the difference per part and the total."""

    processes: Mapping[str, Iterable[int]]

    def snapshot(self) -> dict[str, float]:
        parts = {name: sum(process_cpu_s(pid) for pid in pids) for name, pids in self.processes.items()}
        parts["postgresql"] = postgres_cpu_s()
        parts["broker"] = broker_cpu_s()
        return parts

    def since(self, start: Mapping[str, float]) -> dict[str, float]:
        now = self.snapshot()
        used = {name: round(max(now[name] - start.get(name, 0.0), 0.0), 3) for name in now}
        used["total"] = round(sum(used.values()), 3)
        return used


def pid_listening_on(port: int) -> int | None:
    """The process holding a listening TCP socket on `port` (IPv4), from /proc/net/tcp and the fd links."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
            inodes.add(f"socket:[{inode}]")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(entry.name)
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return None
