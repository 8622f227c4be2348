"""Settling, filters and scanning: when a file is ready, and which files a zone takes."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon import watcher
from daemon.config import ZoneSettings
from daemon.watcher import (
    Settler,
    WatchLimit,
    ZoneWatcher,
    accepts,
    folder_identity,
    inotify_full,
    scan,
)

NOW = 1_800_000_000.0


def test_a_file_untouched_for_longer_than_settle_is_ready_at_once() -> None:
    """A file whose mtime is older than the settle time needs no waiting."""
    settler = Settler(1.0)
    assert settler.observe("a", (10, int((NOW - 5) * 1e9)), NOW)


def test_a_fresh_file_waits_for_the_settle_time() -> None:
    """A just-written file is ready only after it stayed unchanged for settle_s."""
    settler = Settler(1.0)
    version = (10, int(NOW * 1e9))
    assert not settler.observe("a", version, NOW)
    assert not settler.observe("a", version, NOW + 0.5)
    assert settler.observe("a", version, NOW + 1.0)


def test_a_change_restarts_the_wait() -> None:
    """Growing files are never ready while they grow."""
    settler = Settler(1.0)
    assert not settler.observe("a", (10, int(NOW * 1e9)), NOW)
    assert not settler.observe("a", (20, int((NOW + 0.9) * 1e9)), NOW + 0.9)
    assert not settler.observe("a", (20, int((NOW + 0.9) * 1e9)), NOW + 1.5)
    assert settler.observe("a", (20, int((NOW + 0.9) * 1e9)), NOW + 1.9)


def test_an_mtime_in_the_future_does_not_make_a_file_ready() -> None:
    """Clock skew (an mtime ahead of now) falls back to first-seen time."""
    settler = Settler(1.0)
    assert not settler.observe("a", (1, int((NOW + 3600) * 1e9)), NOW)
    assert settler.observe("a", (1, int((NOW + 3600) * 1e9)), NOW + 1)


def test_filters(tmp_path: Path) -> None:
    """Excludes match any path part; includes match the path or the name; depth obeys recursive."""
    z = ZoneSettings(name="z", path=tmp_path, done_dir=tmp_path / "d",
                     quarantine_dir=tmp_path / "q", include=("*.txt", "reports/*"),
                     exclude=(".*", "*.part"))
    assert accepts(z, "a.txt")
    assert accepts(z, "deep/down/a.txt")
    assert accepts(z, "reports/x.bin")
    assert not accepts(z, "a.bin")
    assert not accepts(z, ".hidden.txt")
    assert not accepts(z, ".git/config.txt")
    assert not accepts(z, "a.txt.part")
    flat = z.model_copy(update={"recursive": False})
    assert accepts(flat, "a.txt")
    assert not accepts(flat, "deep/a.txt")


def test_scan_takes_regular_files_only(tmp_path: Path) -> None:
    """Symlinks (to files or folders), FIFOs, hidden and done folders are never taken."""
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("b")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "link.txt").symlink_to(outside / "secret.txt")
    (tmp_path / "linkdir").symlink_to(outside)
    os.mkfifo(tmp_path / "fifo.txt")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "c.txt").write_text("c")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "old.txt").write_text("old")
    z = ZoneSettings(name="z", path=tmp_path, done_dir=tmp_path / "done",
                     quarantine_dir=tmp_path / "q")
    assert sorted(rel for rel, _ in scan(z)) == ["a.txt", "sub/b.txt"]


class Recorder:
    """Stands in for the structlog logger: keeps (event, fields) of every line."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((event, fields))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for name, fields in self.lines if name == event]


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(watcher, "log", recorder)
    return recorder


def zone_at(path: Path, **settings: Any) -> ZoneSettings:
    return ZoneSettings(name="z", path=path, done_dir=path.parent / "done",
                        quarantine_dir=path.parent / "q", **settings)


def test_folder_identity_never_follows_a_link(tmp_path: Path) -> None:
    """A folder gives (st_dev, st_ino) from lstat; a link, a file or nothing say what they are."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "file").write_text("x")
    st = (tmp_path / "real").lstat()
    assert folder_identity(tmp_path / "real") == (st.st_dev, st.st_ino)
    assert folder_identity(tmp_path / "link") == "a symlink"
    assert folder_identity(tmp_path / "file") == "not a folder"
    assert folder_identity(tmp_path / "none") == "missing"


def test_a_zone_swapped_for_a_link_is_lost_once_and_a_real_folder_adopted(
        tmp_path: Path, logged: Recorder) -> None:
    """A link in the zone's place: one zone_replaced line and nothing pending; a real folder
    put back is adopted with zone_back."""
    path, elsewhere = tmp_path / "zone", tmp_path / "elsewhere"
    path.mkdir()
    elsewhere.mkdir()
    zone = ZoneWatcher(zone_at(path), ledger=None)  # type: ignore[arg-type]
    assert zone.present()
    zone.offer("a.txt", (1, 0))
    path.rename(tmp_path / "moved")
    path.symlink_to(elsewhere)
    assert not zone.present()
    assert not zone.present()
    assert len(logged.named("zone_replaced")) == 1
    assert logged.named("zone_replaced")[0]["now"] == "a symlink"
    assert not len(zone.settler)
    path.unlink()
    path.mkdir()
    assert zone.present()
    assert len(logged.named("zone_back")) == 1
    assert zone.identity == folder_identity(path)


def test_a_zone_replaced_by_another_folder_is_adopted_after_one_line(
        tmp_path: Path, logged: Recorder) -> None:
    """Another real folder at the zone's path: said once, then taken as the zone."""
    path = tmp_path / "zone"
    path.mkdir()
    zone = ZoneWatcher(zone_at(path), ledger=None)  # type: ignore[arg-type]
    assert zone.present()
    first = zone.identity
    path.rename(tmp_path / "old")
    path.mkdir()
    assert zone.present()
    assert zone.present()
    assert zone.identity != first
    assert [f["now"] for f in logged.named("zone_replaced")] == ["another folder"]


def test_a_rescan_through_a_link_takes_nothing(tmp_path: Path, logged: Recorder) -> None:
    """Files behind a link swapped in at the zone's path are never offered. (A zone configured
    as a link is resolved at load, so the link can only appear later.)"""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("stays")
    (tmp_path / "zone").mkdir()
    zone = ZoneWatcher(zone_at(tmp_path / "zone"), ledger=None)  # type: ignore[arg-type]
    (tmp_path / "zone").rmdir()
    (tmp_path / "zone").symlink_to(elsewhere)
    asyncio.run(zone.rescan())
    assert not len(zone.settler)
    assert len(logged.named("zone_replaced")) == 1


def test_the_watch_limit_is_noticed_once_and_rearms_at_most_once_a_minute(
        tmp_path: Path) -> None:
    """Probing once a second: reached, then cleared (re-arm), reached again is not re-armed
    before a minute has passed."""
    answers = iter([True, True, False, True, False, False])
    limit = WatchLimit(zone_at(tmp_path), lambda _: next(answers))
    assert limit.check(0.0) == "reached"
    assert limit.check(0.5) is None  # too soon to probe
    assert limit.check(1.0) is None  # still reached
    assert limit.check(2.0) == "cleared"
    assert limit.check(3.0) == "reached"
    assert limit.check(4.0) is None  # cleared, but the last re-arm was 2 s ago
    assert limit.check(70.0) == "cleared"
    polled = WatchLimit(zone_at(tmp_path, watch="poll"), lambda _: True)
    assert polled.check(0.0) is None, "a polled zone needs no inotify watches"


def test_a_zone_past_the_limit_says_so_once_and_is_rescanned_often(
        tmp_path: Path, logged: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """The limit reached: one line with the limit and the sysctl to raise, and a rescan at
    once; the next rescan waits for the poll interval."""
    monkeypatch.setattr(watcher, "inotify_limit", lambda: (5000, "fs.inotify.max_user_watches={n}"))
    (tmp_path / "sub").mkdir()
    zone = ZoneWatcher(zone_at(tmp_path), ledger=None, probe=lambda _: True)  # type: ignore[arg-type]
    scans: list[float] = []

    async def rescan() -> None:
        scans.append(0)

    monkeypatch.setattr(zone, "rescan", rescan)
    assert not asyncio.run(zone.tend())
    assert not asyncio.run(zone.tend())
    [line] = logged.named("watch_limit_reached")
    assert line["limit"] == 5000
    assert line["folders"] == 2
    assert line["fix"].startswith("sysctl fs.inotify.max_user_watches=10000")
    assert len(scans) == 1


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_the_probe_sees_a_watch_limit_reached(tmp_path: Path) -> None:
    """In a user namespace whose watch limit is 0, the probe answers True; outside, False."""
    code = ("from pathlib import Path; from daemon.watcher import inotify_full, inotify_limit; "
            f"print(inotify_full(Path({str(tmp_path)!r})), inotify_limit()[0])")
    command = ["unshare", "--user", "--map-root-user", "sh", "-c",
               "echo 0 > /proc/sys/user/max_inotify_watches && exec "
               + shlex.join([sys.executable, "-c", code])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False,
                            cwd=Path(__file__).resolve().parents[2])
    if result.returncode and "Operation not permitted" in result.stderr:
        pytest.skip("user namespaces are not allowed here")
    assert result.stdout.split() == ["True", "0"], result.stderr
    assert not inotify_full(tmp_path)


def test_a_watch_that_keeps_failing_is_rescanned_and_rearmed_with_a_backoff(
        tmp_path: Path, logged: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each failure: a rescan at once and a longer wait before the next watch; the same error
    is logged once; the watch task never raises."""
    zone = ZoneWatcher(zone_at(tmp_path), ledger=None)  # type: ignore[arg-type]
    watch = watcher.Watcher([], ledger=None, rescan_s=60)  # type: ignore[arg-type]
    stop, waits, scans = asyncio.Event(), list[float](), list[int]()

    async def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError('Unable to decode path "/z/caf\\xE9.txt" to string')

    async def sleep(_: asyncio.Event, seconds: float) -> bool:
        waits.append(seconds)
        if len(waits) == 4:
            stop.set()
        return stop.is_set()

    async def rescan() -> None:
        scans.append(1)

    monkeypatch.setattr(watch, "_watch_folder", broken)
    monkeypatch.setattr(watcher, "_sleep_unless", sleep)
    monkeypatch.setattr(zone, "rescan", rescan)
    asyncio.run(watch._watch(zone, stop))
    assert waits == [0.5, 1.0, 2.0, 4.0]
    assert len(scans) == 4
    [line] = logged.named("watch_failed")
    assert "not UTF-8" in line["cause"]
