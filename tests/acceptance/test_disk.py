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
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.faultproxy import FaultProxy
from tests.helpers import (
    REPO,
    Daemon,
    Sinks,
    assert_exactly_once,
    proxy_for,
    via_proxy,
    wait_until,
    write_config,
)

UNPRIVILEGED = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")
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


def test_files_the_zone_will_not_let_go_stay_and_the_daemon_goes_on(
        tmp_path: Path, database_url: str) -> None:
    """With done and quarantine on other filesystems (as under the unit's bind mounts, where
    every move is a copy), a file the daemon may not read is quarantined with a one-line
    reason and left in place, and a file in a folder it may not write is stored and left in
    place: each said once, no traceback, and the daemon goes on and stops on SIGTERM. (As
    root, the daemon runs without CAP_DAC_OVERRIDE so permissions bind it too.)"""
    proxy = proxy_for(database_url)  # pgserver's socket folder is closed to it, TCP is not
    zone = tmp_path / "zones" / "docs"
    try:
        files_left_in_place(tmp_path, zone, database_url, proxy)
    finally:
        proxy.stop()


def files_left_in_place(tmp_path: Path, zone: Path, database_url: str,
                        proxy: FaultProxy) -> None:
    with mounted(tmp_path / "done", "-t", "tmpfs", "tmpfs"), \
            mounted(tmp_path / "quarantine", "-t", "tmpfs", "tmpfs"):
        path = write_config(tmp_path, database=via_proxy(database_url, proxy),
                            zones=[{"name": "docs", "path": "zones/docs", "settle_ms": 200,
                                    "done_dir": "done", "quarantine_dir": "quarantine"}])
        locked, kept = foreign(zone / "locked.txt", 0o600), foreign(zone / "theirs" / "kept.txt")
        (zone / "fine.txt").write_text("a file that leaves")
        with unprivileged(Daemon(path)) as daemon:
            wait_until(lambda: len(daemon.named("file_processed")) == 3, 120, "three files")
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(60) == 0
        outcomes = {e["path"]: e for e in daemon.named("file_processed")}
        assert outcomes["theirs/kept.txt"]["outcome"] == "stored"
        assert "cannot read the file (Permission denied)" in outcomes["locked.txt"]["error"]
        assert {e["path"] for e in daemon.named("source_left_in_place")} == {
            "locked.txt", "theirs/kept.txt"}
        assert not daemon.named("stage_crashed") and locked.exists() and kept.exists()
        assert not (zone / "fine.txt").exists()
        locked.chmod(0o644)  # the producer fixes it; retry finds it where it stayed
        retry = subprocess.run([*UNPRIVILEGED, sys.executable, "-m", "daemon", "quarantine",
                                "retry", "--all", "--config", str(path)], capture_output=True,
                               text=True, cwd=REPO, timeout=120)
        assert retry.returncode == 0, retry.stdout + retry.stderr
        once = unprivileged(Daemon(path, "--once"))
        assert once.run() == 0, once.problems()
        assert [e["path"] for e in once.named("file_processed")] == ["locked.txt"]


def unprivileged(daemon: Daemon) -> Daemon:
    daemon.command = [*UNPRIVILEGED, *daemon.command]
    return daemon


def foreign(path: Path, mode: int = 0o644) -> Path:
    """A file owned by nobody, in a folder owned by nobody that only its owner may write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"a file of someone else's: {path.name}")
    path.chmod(mode)
    os.chown(path, 65534, 65534)
    if path.parent.name != "docs":
        os.chown(path.parent, 65534, 65534)
    return path
