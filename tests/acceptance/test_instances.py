"""Several daemons (and a --once beside them) on the same zones and database: every file is
processed once, and a daemon killed mid-work has its files taken over."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

from tests.helpers import Daemon, Sinks, assert_exactly_once, make_corpus, s3_config, wait_until


def test_three_daemons_and_a_once_share_the_work(tmp_path: Path, database_url: str,
                                                 s3_endpoint: str, bucket: str) -> None:
    """Three daemons share 300 files, one is killed -9 half-way, a --once joins in: each file
    ends once in every sink and is reported by exactly one process at most."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket,
                     pipeline={"workers": 3, "lease_s": 30},
                     mlflow={"window_s": 1.0, "window_files": 50})
    zone, sinks = tmp_path / "zones" / "docs", Sinks(path)
    daemons = [Daemon(path).start() for _ in range(3)]
    try:
        for daemon in daemons:
            daemon.wait_for("daemon_ready", 120)
        texts = make_corpus(zone, 150, "first")
        wait_until(lambda: len(sinks.documents()) >= 40, 180, "40 documents")
        daemons[0].signal(signal.SIGKILL)
        texts.update(make_corpus(zone, 150, "second"))
        once = Daemon(path, "--once")
        assert once.run() == 0, once.problems()
        wait_until(lambda: not list(zone.rglob("*.txt")), 300, "an empty zone")
        for daemon in daemons[1:]:
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(60) == 0
    finally:
        for daemon in daemons:
            daemon.__exit__()
    assert_exactly_once(sinks, texts, tmp_path / "var" / "done" / "docs")
    reported = Counter(e["path"] for d in [*daemons, once] for e in d.named("file_processed"))
    assert set(reported.values()) == {1}
    assert all(len(d.named("file_processed")) > 0 for d in daemons[1:])
