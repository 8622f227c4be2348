"""Who holds a claim: `host:pid:start`, so a dead holder on this host is recognised at once.

The process start time (from /proc) tells a dead process from a new one that reused its pid.
Holders on other hosts cannot be checked from here: their leases expire instead.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def alive(pid: int) -> bool:
    """Whether process `pid` exists (one we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def this_process() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or 0}"


def is_dead(holder: str) -> bool:
    """True only when `holder` ran on this host and that process no longer exists."""
    parts = holder.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or parts[0] != socket.gethostname():
        return False
    started = _start_time(int(parts[1]))
    return started is None or (parts[2] != "0" and started != parts[2])
