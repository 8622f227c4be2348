"""Where a contender's CPU goes, by process group, read from /proc while it runs.

Groups: `main`, the contender's own process (the daemon, s5cmd, aws, the reference script);
`workers`, the daemon's other processes (its fork server, the embedding workers it forks, the
multiprocessing resource tracker); `mlflow`, the daemon's MLflow process (a child of the same
fork server, with the same command line: told apart as the one that has loaded SQLAlchemy's
compiled extensions); `postgres`, the server the contender writes to; `s3`, the S3 server.

How each is counted:

* the contender's processes: utime + stime of each (/proc/<pid>/stat fields 14 and 15),
  sampled every 0.2 s, the last value seen per pid; the main process exactly, from the rusage
  `os.wait4` gives when it is reaped, less what it had reaped of its children by the last
  sample (they are counted in their own groups);
* a server of our own (the S3 server, the embedded Postgres): its process tree's total from
  just before the spawn to just after the exit, the root's utime + stime + cutime + cstime
  (fields 16 and 17: children it has reaped, such as exited Postgres backends) plus every live
  descendant's utime + stime, so a process that exits is neither lost nor counted twice; its
  idle background work (a few ms per second) is in it;
* a shared Postgres server (`--database server`): the backends serving the contender's
  database (their process title names it), sampled like the contender's processes; the
  server's background processes (checkpointer, WAL writer) serve everyone and are left out.

A sampled process that exits between two samples loses its last <= 0.2 s (the workers and the
MLflow process at shutdown, a shared server's backends); one that starts and ends between two
samples is missed.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from bench.infra import Sampler, descendants

GROUPS = ("main", "workers", "mlflow", "postgres", "s3")
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float] | None:
    """(its own, its reaped children's) CPU seconds so far, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own, reaped = int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
    except (OSError, ValueError, IndexError):
        return None
    return own * TICK_S, reaped * TICK_S


def tree_seconds(root: int) -> float | None:
    """A process tree's CPU so far: every live process's own and reaped children's (a reaped
    process's CPU is in its reaper's, once), or None when `root` is gone."""
    found = cpu_times(root)
    if found is None:
        return None
    rest = (cpu_times(pid) for pid in descendants(root))
    return sum(found) + sum(sum(times) for times in rest if times is not None)


def _mentions(pid: int, path: str, needle: str) -> bool:
    """Whether /proc/<pid>/<path> holds `needle` (False once the process is gone)."""
    try:
        return needle in Path(f"/proc/{pid}/{path}").read_text(errors="replace")
    except OSError:
        return False


class Meter(Protocol):
    """One server-side group: sampled before the spawn, on every tick, and after the exit."""

    group: str

    def sample(self, begin: bool = False) -> None: ...

    def seconds(self) -> float: ...


class _PerPid:
    """CPU seconds per pid: the first value (when seen before the spawn) and the last."""

    def __init__(self, group: str) -> None:
        self.group = group
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}

    def record(self, pid: int, value: float, begin: bool) -> None:
        if begin:
            self.first[pid] = value
        self.last[pid] = value

    def seconds(self) -> float:
        """What was used between the spawn and the exit."""
        return sum(last - self.first.get(pid, 0.0) for pid, last in self.last.items())


class Tree(_PerPid):
    """A server of our own: its whole process tree, found by `root()` on every sample (the
    embedded Postgres's postmaster is read from its postmaster.pid)."""

    def __init__(self, group: str, root: Callable[[], int | None]) -> None:
        super().__init__(group)
        self.root = root

    def sample(self, begin: bool = False) -> None:
        pid = self.root()
        total = tree_seconds(pid) if pid is not None else None
        if pid is not None and total is not None:
            self.record(pid, total, begin)


class Backends(_PerPid):
    """The backends of a shared Postgres server that serve `database` (their title names it),
    children of any postmaster running when the contender starts."""

    def __init__(self, group: str, database: str) -> None:
        super().__init__(group)
        self.needle = f" {database} "
        self.postmasters: list[int] = []

    def sample(self, begin: bool = False) -> None:
        if begin:
            self.postmasters = postmasters()
        for root in self.postmasters:
            for pid in descendants(root):
                times = cpu_times(pid) if _mentions(pid, "cmdline", self.needle) else None
                if times is not None:
                    self.record(pid, times[0], begin)


def postmasters() -> list[int]:
    """Every running Postgres main process: `.../postgres -D <dir> ...`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"postgres") and b"-D" in argv:
                found.append(int(entry.name))
    return found


class CpuWatch(Sampler):
    """The contender's processes by group, and the servers' meters, over one timed run."""

    def __init__(self, servers: Sequence[Meter], every_s: float = 0.2) -> None:
        super().__init__(every_s)
        self.servers = list(servers)
        self.groups: dict[int, str] = {}
        self.last: dict[int, float] = {}
        self.main_reaped = 0.0

    def begin(self) -> None:
        for meter in self.servers:
            meter.sample(begin=True)

    def sample(self, pid: int) -> None:
        for each in {pid} | descendants(pid):
            times = cpu_times(each)
            if times is not None:
                self.last[each], self.groups[each] = times[0], self._group(each, pid)
                self.main_reaped = times[1] if each == pid else self.main_reaped
        for meter in self.servers:
            meter.sample()

    def _group(self, pid: int, main: int) -> str:
        if pid == main:
            return "main"
        if self.groups.get(pid) == "mlflow" or _mentions(pid, "maps", "sqlalchemy"):
            return "mlflow"
        return "workers"

    def finish(self, pid: int, usage: resource.struct_rusage | None) -> None:
        super().finish(pid, usage)
        for meter in self.servers:
            meter.sample()
        if usage is not None:
            self.last[pid] = usage.ru_utime + usage.ru_stime - self.main_reaped
            self.groups[pid] = "main"

    def seconds(self) -> dict[str, float]:
        """CPU seconds per group over the run (every group of GROUPS, zero if unseen)."""
        found = dict.fromkeys(GROUPS, 0.0)
        for pid, used in self.last.items():
            found[self.groups[pid]] += used
        for meter in self.servers:
            found[meter.group] += meter.seconds()
        return found
