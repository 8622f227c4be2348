"""Ctrl-C and SIGTERM: intake stops at once, the stop is prompt and honest, nothing is lost.

Timings here are bounds far above what the code needs (it stops within ~2 s on this 2-core
machine) and far below what the old drain took (it went on claiming for its whole grace period),
so a slow machine does not fail them and the old behaviour does.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.helpers import Daemon, Sinks, assert_exactly_once, make_corpus, s3_config, wait_until

GRACE_S = 60  # drain_grace_s: a drain that waited for intake to dry up would take all of it


def _backlog(tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str,
             count: int) -> tuple[Path, dict[str, str]]:
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket,
                     pipeline={"workers": 4, "batch_files": 8, "drain_grace_s": GRACE_S,
                               "lease_s": 30})
    return path, make_corpus(tmp_path / "zones" / "docs", count)


def _stop_after_first_stored(daemon: Daemon, sinks: Sinks, *signals: int) -> float:
    """Send `signals` once a few files are stored; returns the seconds until the exit."""
    wait_until(lambda: len(sinks.documents()) >= 5, 120, "first documents")
    started = time.monotonic()
    for sig in signals:
        daemon.signal(sig)
        time.sleep(0.2)
    daemon.wait(GRACE_S * 2)
    return time.monotonic() - started


def test_interrupted_once_exits_promptly_and_the_next_run_resumes(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """Ctrl-C on `--once` exits 130 within seconds with one line saying how many files
    resume; the next `--once` stores every file exactly once."""
    path, texts = _backlog(tmp_path, database_url, s3_endpoint, bucket, 1500)
    sinks = Sinks(path)
    with Daemon(path, "--once") as daemon:
        took_s = _stop_after_first_stored(daemon, sinks, signal.SIGINT)
        assert daemon.process is not None and daemon.process.returncode == 130
    assert took_s < GRACE_S / 2, f"--once took {took_s:.1f} s to stop"  # not the grace
    [line] = daemon.named("once_interrupted")
    assert 0 < line["files_left"] <= len(texts)
    assert Daemon(path, "--once").run() == 0
    assert_exactly_once(sinks, texts, tmp_path / "var" / "done" / "docs")


def test_second_signal_exits_at_once(tmp_path: Path, database_url: str, s3_endpoint: str,
                                     bucket: str) -> None:
    """A second Ctrl-C ends `--once` at once; the next run still stores everything once."""
    path, texts = _backlog(tmp_path, database_url, s3_endpoint, bucket, 1500)
    sinks = Sinks(path)
    with Daemon(path, "--once") as daemon:
        took_s = _stop_after_first_stored(daemon, sinks, signal.SIGINT, signal.SIGINT)
        assert daemon.process is not None and daemon.process.returncode == 130
    assert took_s < 10, f"a second signal took {took_s:.1f} s to end the run"
    assert Daemon(path, "--once").run() == 0
    assert_exactly_once(sinks, texts)


def test_daemon_stops_claiming_at_once_and_drains(tmp_path: Path, database_url: str,
                                                  s3_endpoint: str, bucket: str) -> None:
    """SIGTERM with a backlog: the daemon takes no new files, finishes those in flight well
    within its grace period, leaves no claim behind, and exits 0."""
    path, texts = _backlog(tmp_path, database_url, s3_endpoint, bucket, 1500)
    sinks = Sinks(path)
    with Daemon(path) as daemon:
        daemon.wait_for("daemon_ready", 120)
        took_s = _stop_after_first_stored(daemon, sinks, signal.SIGTERM)
        assert daemon.process is not None and daemon.process.returncode == 0, daemon.problems()
    assert took_s < GRACE_S / 2, f"the drain took {took_s:.1f} s"
    assert not daemon.named("drain_timeout")
    rows = sinks.ledger()
    assert not [r for r in rows if r["claimed_by"]], "every claim is handed back"
    assert len(sinks.documents()) < len(texts), "the backlog was not worked through first"
    assert Daemon(path, "--once").run() == 0
    assert_exactly_once(sinks, texts, tmp_path / "var" / "done" / "docs")
