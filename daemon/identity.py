"""Who holds a claim: `host:pid:start:nonce`, unique among every daemon sharing a database.

Host, pid and start time say where to look in the logs; the random nonce makes two containers
that share a hostname and a pid (each in its own PID namespace) two owners, never one. Whether
a holder is alive is never judged from here (this host's /proc says nothing about another
namespace's processes): every daemon keeps a heartbeat row in `dz_daemons` (see the ledger).
"""

from __future__ import annotations

import os
import secrets
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
    """A new owner id for this process: host, pid, start time and 8 random hex digits."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or 0}:{secrets.token_hex(4)}"
