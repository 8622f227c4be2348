"""What every worker process (embedding, MLflow) does first: live and die with the daemon.

Workers ignore SIGINT (a Ctrl-C on a terminal is the daemon's to handle, by draining), log
exactly as the daemon does, let failpoints kill the daemon rather than only themselves, and
exit the moment the daemon is gone however it ended (a SIGKILL included): a pool's own pipes
do not tell them, and a worker outliving its daemon would hold memory and an MLflow store.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
from multiprocessing.context import ForkServerContext
from typing import Any

from daemon import failpoints, logs

PRELOAD_ENV = "DROPZONE_MLFLOW_PRELOAD"


def setup(daemon_pid: int, log_state: Any) -> None:
    """Run first in each worker process (a pool's initializer calls it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.replay(log_state)
    failpoints.in_worker(daemon_pid)
    die_with(daemon_pid)


def die_with(pid: int) -> None:
    """Exit this process as soon as process `pid` has ended (a pidfd, no polling)."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(0)

    def watch() -> None:
        select.select([handle], [], [])
        os._exit(0)

    threading.Thread(target=watch, name="die-with-daemon", daemon=True).start()


def context() -> ForkServerContext:
    """How every worker process starts: forked from one small server per daemon that imported
    our code (and numpy) once, so a worker starts in milliseconds rather than a second. With
    DROPZONE_MLFLOW_PRELOAD=1 the server imports MLflow too: each new MLflow process then
    starts at once (the test suite opens hundreds), for ~120 MiB more held by the server."""
    server = multiprocessing.get_context("forkserver")
    preload = ["daemon.workers", "daemon.embedders.pool", "daemon.tracking"]
    if os.environ.get(PRELOAD_ENV) == "1":
        preload.append("mlflow.tracking")
    server.set_forkserver_preload(preload)
    return server


def parent_state() -> tuple[int, Any]:
    """What `setup` needs, taken in the daemon."""
    return os.getpid(), logs.snapshot()
