"""The suite leaves no process it started.

`python3 .ci/leftovers.py snapshot FILE` records the processes running now; `... check FILE`
(after the tests) fails, naming their command lines, if a process that was not there before is
still running 20 s later (time enough for exits already under way). Only processes that run
something from this checkout (its venv's Python, the `weed` or Postgres binaries its packages
ship) count: the machine's own services come and go as they please. Standard library only.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process still running."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":  # a zombie has ended; its parent has just not reaped it
            found[int(entry.name)] = (int(fields[1]), args.strip() or stat.split()[1])
    return found


def not_ours(table: dict[int, tuple[int, str]]) -> dict[int, str]:
    """Leave out this script and its ancestors (the CI shell that runs it)."""
    mine, pid = set(), os.getpid()
    while pid in table and pid not in mine:
        mine.add(pid)
        pid = table[pid][0]
    return {p: args for p, (_, args) in table.items() if p not in mine}


def ours(args: str) -> bool:
    return str(Path(__file__).resolve().parent.parent) in args or "pgserver" in args


def main(mode: str, file: str) -> int:
    if mode == "snapshot":
        Path(file).write_text("\n".join(map(str, not_ours(processes()))))
        return 0
    before = {int(p) for p in Path(file).read_text().split()}
    for _ in range(20):
        left = {p: a for p, a in not_ours(processes()).items() if p not in before and ours(a)}
        if not left:
            print("no process left behind by the tests")
            return 0
        time.sleep(1)
    print("processes the tests started and left running:")
    print("\n".join(f"  {pid} {args}" for pid, args in sorted(left.items())))
    return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
