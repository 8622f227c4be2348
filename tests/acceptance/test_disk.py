"""A full disk and a read-only folder under the daemon: intake stops loudly, nothing is
corrupted or quarantined, and everything completes once the disk is usable again.

These mount small filesystems, so they need root (CI runs as root); elsewhere they are skipped
with that reason.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import Daemon, Sinks, assert_exactly_once, wait_until, write_config

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a filesystem needs root")


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@contextmanager
def mounted(target: Path, *args: str) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    mount(*args, str(target))
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


def drop_files(zone: Path, count: int, size: int) -> dict[str, str]:
    texts = {}
    for i in range(count):
        name = f"big{i:02d}.txt"
        texts[name] = (f"file {i} " * (size // 7))[:size]
        (zone / name).write_text(texts[name])
    return texts


def test_a_full_disk_stops_intake_until_space_returns(tmp_path: Path, database_url: str) -> None:
    """The object store's 1 MiB filesystem fills up: one dependency_down line, no partial
    objects, nothing quarantined; after the filesystem grows, every file lands intact."""
    objects = tmp_path / "objects"
    with mounted(objects, "-t", "tmpfs", "-o", "size=1m", "tmpfs"):
        path = write_config(tmp_path, database=database_url, storage={"url": str(objects)},
                            mlflow={"window_s": 0.5})
        with Daemon(path) as daemon:
            daemon.wait_for("daemon_ready", 120)
            texts = drop_files(tmp_path / "zones" / "docs", 12, 200_000)
            daemon.wait_for("dependency_down", 120, dependency="objects")
            assert not [p for p in objects.rglob("*") if p.name.startswith(".put-")]
            assert "quarantined" not in {r["outcome"] for r in Sinks(path).ledger()}
            mount("-o", "remount,size=64m", str(objects))
            wait_until(lambda: len(daemon.named("file_processed")) == 12, 180, "all files")
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(60) == 0
        sinks = Sinks(path)
        assert_exactly_once(sinks, texts)
        for doc in sinks.documents():
            stored = Path(doc["object_url"].removeprefix("file://")).read_bytes()
            assert hashlib.sha256(stored).hexdigest() == doc["sha256"]
        assert daemon.named("dependency_recovered")


def test_a_read_only_done_folder_holds_files_in_the_zone(tmp_path: Path,
                                                         database_url: str) -> None:
    """The done folder turns read-only: stored files wait in their zone (not quarantined),
    then move once it is writable again."""
    done = tmp_path / "done"
    zones = [{"name": "docs", "path": "zones/docs", "settle_ms": 200, "done_dir": str(done)}]
    path = write_config(tmp_path, database=database_url, zones=zones, mlflow={"window_s": 0.5})
    zone = tmp_path / "zones" / "docs"
    with _ro_bind(done):
        with Daemon(path) as daemon:
            daemon.wait_for("daemon_ready", 120)
            texts = drop_files(zone, 4, 3_000)
            daemon.wait_for("dependency_down", 120, dependency="state")
            assert len(list(zone.glob("*.txt"))) == 4
            mount("-o", "remount,bind,rw", str(done))
            wait_until(lambda: len(daemon.named("file_processed")) == 4, 180, "all files")
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(60) == 0
        assert_exactly_once(Sinks(path), texts, done)
    assert not list(zone.glob("*.txt"))


@contextmanager
def _ro_bind(target: Path) -> Iterator[Path]:
    """`target` bind-mounted onto itself, read-only."""
    target.mkdir(parents=True, exist_ok=True)
    mount("--bind", str(target), str(target))
    try:
        mount("-o", "remount,bind,ro", str(target))
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)
