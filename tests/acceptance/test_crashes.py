"""kill -9 at any moment: whatever dies when, every file ends exactly once in every sink.

Failpoints (daemon/failpoints.py) make the daemon SIGKILL itself exactly between two writes
that must not be torn apart; other trials kill it from outside at random moments.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import time
from pathlib import Path

from tests.helpers import (
    REPO,
    Daemon,
    Sinks,
    assert_exactly_once,
    drop,
    s3_config,
    s3_storage,
    wait_until,
    write_config,
)

# (failpoint, on which pass to die): every window between two durable writes
TRIALS = [
    ("after_hash", 25), ("after_upload", 30), ("after_store", 40), ("random", 0),
    ("mid_mlflow_run", 1), ("after_mlflow", 1), ("after_tracked", 1), ("after_move", 15),
    ("random", 0), ("after_upload", 5), ("random", 0), ("after_finish", 10),
]


def add_files(zone: Path, trial: int, count: int, texts: dict[str, str]) -> None:
    """New files for this trial, plus a copy of an older content under a new name."""
    for i in range(count):
        name = f"t{trial:02d}/f{i:03d}.txt"
        texts[name] = f"trial {trial} file {i}\n\n" + f"content{trial}x{i} " * (20 + i * 7)
        drop(zone, name, texts[name])
    if texts:
        old = sorted(texts)[trial % len(texts)]
        texts[f"t{trial:02d}/copy.txt"] = texts[old]
        drop(zone, f"t{trial:02d}/copy.txt", texts[old])


def kill_after(daemon: Daemon, delay_s: float) -> int:
    daemon.start()
    time.sleep(delay_s)
    if daemon.process and daemon.process.poll() is None:
        daemon.signal(signal.SIGKILL)
    return daemon.wait(120)


def test_kill_9_between_every_pair_of_writes(tmp_path: Path, database_url: str,
                                             s3_endpoint: str, bucket: str) -> None:
    """Twelve trials: each `--once` dies at a failpoint or a random moment, new files arrive
    between trials; a last clean `--once` leaves one object, document, chunk set and record
    per content, and every source in the done folder."""
    path = write_config(tmp_path, database=database_url, storage=s3_storage(s3_endpoint, bucket),
                        pipeline={"workers": 4, "lease_s": 5})
    zone, rng = tmp_path / "zones" / "docs", random.Random(42)
    texts: dict[str, str] = {}
    outcomes = []
    for trial, (point, nth) in enumerate(TRIALS):
        add_files(zone, trial, 40, texts)
        if point == "random":
            code = kill_after(Daemon(path, "--once"), rng.uniform(1.0, 4.0))
        else:
            code = Daemon(path, "--once", env={"DROPZONE_FAILPOINTS": f"{point}={nth}"}).run()
        outcomes.append((point, code))
    assert sum(code == -signal.SIGKILL for _, code in outcomes) >= 10, outcomes
    final = Daemon(path, "--once")
    assert final.run() == 0, final.output()[-3000:]
    assert_exactly_once(Sinks(path), texts, tmp_path / "var" / "done" / "docs")
    assert not list(zone.rglob("*.txt"))


def test_kill_9_during_the_very_first_start(tmp_path: Path) -> None:
    """Killed while embedded Postgres and the MLflow store are being created, then at random
    early moments; the next start repairs what was cut short and runs normally."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    zone, state = tmp_path / "dropzones" / "documents", tmp_path / "var"
    (tmp_path / "dropzones" / "reports").mkdir(parents=True)
    (tmp_path / "dropzones" / "papers").mkdir(parents=True)
    texts: dict[str, str] = {}
    add_files(zone, 0, 10, texts)
    path = tmp_path / "config" / "drop_zones.yaml"
    first = Daemon(path, "--once", env={"DROPZONE_FAILPOINTS": "embedded_pg_init=1"})
    assert first.run() == -signal.SIGKILL
    assert (state / "pg").exists() and not (state / "pg.ready").exists()
    second = Daemon(path, "--once", env={"DROPZONE_FAILPOINTS": "mlflow_store_init=1"})
    assert second.run() == -signal.SIGKILL
    assert list(state.glob(".mlflow.db.init-*")) and not (state / "mlflow.db").exists()
    codes = [kill_after(Daemon(path, "--once"), delay) for delay in (0.4, 1.5, 3.0)]
    assert codes.count(-signal.SIGKILL) >= 2, codes
    final = Daemon(path, "--once")
    assert final.run() == 0, final.output()[-3000:]
    assert_exactly_once(Sinks(path), texts, tmp_path / "var" / "done" / "documents")


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, their children...), from /proc."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in map(int, (task / "children").read_text().split()):
                found |= {child} | descendants(child)
    return found


def test_worker_processes_die_with_a_killed_daemon(tmp_path: Path, database_url: str,
                                                   s3_endpoint: str, bucket: str) -> None:
    """The embedding workers and the MLflow process (and its fork server) do not outlive a
    daemon killed with SIGKILL: nothing is left holding memory or the MLflow store. (Without
    the suite's MLflow preload: as users run it.)"""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket)
    with Daemon(path, env={"DROPZONE_MLFLOW_PRELOAD": "0"}) as daemon:
        daemon.wait_for("daemon_ready")
        drop(tmp_path / "zones" / "docs", "a.txt", "some words to embed " * 50)
        daemon.wait_for("file_processed", outcome="stored")
        assert daemon.process is not None
        workers = descendants(daemon.process.pid)
        assert len(workers) >= 3, workers  # embedding worker, MLflow fork server and process
        daemon.signal(signal.SIGKILL)
        daemon.wait(30)
        wait_until(lambda: not [p for p in workers if Path(f"/proc/{p}").exists()
                                and "zombie" not in _state(p)],
                   timeout_s=10, what=f"workers {sorted(workers)} to exit")


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    return "gone"
