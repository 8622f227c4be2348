"""Settling, filters and scanning: when a file is ready, and which files a zone takes."""

from __future__ import annotations

import os
from pathlib import Path

from daemon.config import ZoneSettings
from daemon.watcher import Settler, accepts, scan

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
