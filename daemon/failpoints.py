"""Failpoints: named places where a test makes the daemon die for real, by SIGKILL to itself.

`DROPZONE_FAILPOINTS="after_upload=3,after_mlflow=1"` kills the process the 3rd time a file
passes `after_upload`, or the 1st time a batch passes `after_mlflow`, whichever comes first.
Crash-safety tests use it to land a kill -9 exactly between two writes that must not be torn
apart. Unset (always, outside tests), `hit` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

ENV = "DROPZONE_FAILPOINTS"


def parse(spec: str) -> dict[str, int]:
    """`"a=3,b=1"` -> {"a": 3, "b": 1}; malformed parts are ignored."""
    points = {}
    for part in spec.split(","):
        name, _, count = part.strip().partition("=")
        if name and count.isdigit() and int(count) > 0:
            points[name] = int(count)
    return points


_armed = parse(os.environ.get(ENV, ""))
_hits: Counter[str] = Counter()
_lock = threading.Lock()
_daemon_pid = os.getpid()


def in_worker(daemon_pid: int) -> None:
    """Called in a worker process: a failpoint hit there kills the daemon too."""
    global _daemon_pid
    _daemon_pid = daemon_pid


def hit(name: str) -> None:
    """Count a pass through `name`; die (SIGKILL) on the armed pass."""
    if name not in _armed:
        return
    with _lock:
        _hits[name] += 1
        if _hits[name] == _armed[name]:
            if _daemon_pid != os.getpid():
                os.kill(_daemon_pid, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
