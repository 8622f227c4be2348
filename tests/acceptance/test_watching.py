"""Watching survives what real machines do: names the watch library cannot decode, a zone folder
swapped for a link or another folder, and an inotify watch limit too small for the tree."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import Daemon, Sinks, drop, proxy_for, s3_config, via_proxy, wait_until

# Latin-1 bytes (as SMB shares give), a newline, control characters, a 255-byte name
HARD_NAMES = [b"caf\xe9.txt", b"new\nline.txt", b"ctrl\x01\x07\x1bbell.txt",
              b"n" * 251 + b".txt"]


def write_hard_names(zone: Path) -> dict[bytes, bytes]:
    """Each hard name with its own content, written by bytes path; returns name -> content."""
    contents = {name: f"hard name number {i}\n".encode() for i, name in enumerate(HARD_NAMES)}
    for name, content in contents.items():
        with open(bytes(zone) + b"/" + name, "wb") as out:
            out.write(content)
    return contents


def assert_stored_once(path: Path, contents: dict[bytes, bytes]) -> None:
    """One document and one object per file, and each file in done/ under its exact bytes."""
    sinks = Sinks(path)
    shas = sorted(hashlib.sha256(c).hexdigest() for c in contents.values())
    assert sorted(d["sha256"] for d in sinks.documents()) == shas
    keys = sinks.object_keys()
    assert len(keys) == len(shas)
    assert all(k.isprintable() and len(k.rsplit("/", 1)[-1].encode()) <= 200 for k in keys)
    done = path.parent / "var" / "done" / "docs"
    assert sorted(os.fsencode(p.name) for p in done.iterdir()) == sorted(contents)
    for name, content in contents.items():
        assert (done / os.fsdecode(name)).read_bytes() == content


def test_names_the_watch_cannot_decode_are_taken_and_the_daemon_stays_up(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """A Latin-1 name breaks the inotify watch: the zone says so once, rescans, watches again;
    every hard name is stored once and moved to done/ with its exact bytes."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket)
    zone = tmp_path / "zones" / "docs"
    with Daemon(path) as daemon:
        daemon.wait_for("daemon_ready", 120)
        contents = write_hard_names(zone)
        wait_until(lambda: len(daemon.named("file_processed")) == len(HARD_NAMES), 60,
                   "every hard name processed")
        drop(zone, "after.txt", "dropped once the watch is back")
        daemon.wait_for("file_processed", 60, path="after.txt")
        assert daemon.process is not None and daemon.process.poll() is None
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.output()[-3000:]
    [failed] = daemon.named("watch_failed")  # once, not at every re-arm
    assert "not UTF-8" in failed["cause"], failed
    assert len(daemon.raw) == len(daemon.events), "no traceback, only JSON lines"
    assert_stored_once(path, {**contents, b"after.txt": b"dropped once the watch is back"})


def test_once_takes_the_same_hard_names(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """`--once` stores each hard name once and moves it with its exact bytes."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket)
    contents = write_hard_names(tmp_path / "zones" / "docs")
    daemon = Daemon(path, "--once")
    assert daemon.run() == 0, daemon.problems()
    assert len(daemon.raw) == len(daemon.events)
    assert_stored_once(path, contents)


def test_a_zone_swapped_for_a_symlink_is_never_followed(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """The zone folder moved away and a link to another folder put in its place: one
    `zone_replaced` line, nothing taken from the link's target; a real folder is adopted again."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket, pipeline={"rescan_s": 0.3})
    zone, elsewhere = tmp_path / "zones" / "docs", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("must stay where it is")
    with Daemon(path) as daemon:
        daemon.wait_for("daemon_ready", 120)
        drop(zone, "before.txt", "taken before the swap")
        daemon.wait_for("file_processed", 60, path="before.txt")
        zone.rename(tmp_path / "zones" / "moved-away")
        zone.symlink_to(elsewhere, target_is_directory=True)
        daemon.wait_for("zone_replaced", 30)
        drop(elsewhere, "later.txt", "dropped into the link's target")
        time.sleep(2)  # several rescans (every 0.3 s) and watch checks: none may follow the link
        zone.unlink()
        zone.mkdir()
        daemon.wait_for("zone_back", 30)
        drop(zone, "after.txt", "dropped into a real folder again")
        daemon.wait_for("file_processed", 60, path="after.txt")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    assert sorted(p.name for p in elsewhere.iterdir()) == ["later.txt", "precious.txt"]
    assert sorted(d["source_path"] for d in Sinks(path).documents()) == ["after.txt",
                                                                          "before.txt"]
    assert len(daemon.named("zone_replaced")) == 1


def test_a_zone_folder_replaced_by_another_is_watched_anew(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """The zone folder renamed away and a new one made at its path: the new folder is watched
    (without waiting for the hourly rescan), the old one is left alone."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket, pipeline={"rescan_s": 3600})
    zone, old = tmp_path / "zones" / "docs", tmp_path / "zones" / "old-docs"
    with Daemon(path) as daemon:
        daemon.wait_for("daemon_ready", 120)
        drop(zone, "before.txt", "taken before the swap")
        daemon.wait_for("file_processed", 60, path="before.txt")
        zone.rename(old)
        zone.mkdir()
        wait_until(lambda: daemon.named("zone_replaced") or daemon.named("zone_back"), 30,
                   "the new folder noticed")
        drop(old, "stray.txt", "dropped into the folder that was moved away")
        drop(zone, "after.txt", "dropped into the new folder")
        daemon.wait_for("file_processed", 60, path="after.txt")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    assert sorted(d["source_path"] for d in Sinks(path).documents()) == ["after.txt",
                                                                          "before.txt"]
    assert (old / "stray.txt").exists()


def in_user_namespace(daemon: Daemon, max_watches: int) -> Daemon:
    """Run the daemon in a user namespace of its own with a low inotify watch limit: the
    limit binds there only, not for the rest of the machine."""
    setup = f"echo {max_watches} > /proc/sys/user/max_inotify_watches"
    daemon.command = ["unshare", "--user", "--map-root-user", "sh", "-c",
                      f"{setup} && exec {shlex.join(daemon.command)}"]
    return daemon


def test_folders_past_the_inotify_watch_limit_are_polled(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str,
        request: pytest.FixtureRequest) -> None:
    """120 folders and a 40-watch limit: the limit is logged once with the sysctl to raise,
    and files in the folders without a watch are still taken long before the hourly rescan."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to lower the watch limit in a user namespace")
    proxy = proxy_for(database_url)  # TCP: the namespace's root cannot enter pgserver's folder
    request.addfinalizer(proxy.stop)
    path = s3_config(tmp_path, via_proxy(database_url, proxy), s3_endpoint, bucket,
                     pipeline={"rescan_s": 3600})
    zone = tmp_path / "zones" / "docs"
    for i in range(120):
        (zone / f"d{i:03d}").mkdir()
    with in_user_namespace(Daemon(path), 40) as daemon:
        daemon.wait_for("daemon_ready", 120)
        limit = daemon.wait_for("watch_limit_reached", 30)
        for i in range(120):
            drop(zone / f"d{i:03d}", f"f{i:03d}.txt", f"file in folder {i}")
        wait_until(lambda: len(daemon.named("file_processed")) == 120, 120, "all 120 files")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    assert limit["limit"] == 40
    assert "sysctl fs.inotify.max_user_watches=" in limit["fix"]
    assert len(daemon.named("watch_limit_reached")) == 1


def test_a_255_byte_name_reused_is_moved_beside_the_first(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """A second version of a 255-byte name cannot be `name.1.txt` (257 bytes): it goes to
    done/ under the name cut to fit, and nothing is quarantined."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket)
    zone, name = tmp_path / "zones" / "docs", "n" * 251 + ".txt"
    with Daemon(path) as daemon:
        daemon.wait_for("daemon_ready", 120)
        (zone / name).write_text("first version")  # no room for drop()'s temporary name
        daemon.wait_for("file_processed", 60, path=name)
        (zone / name).write_text("second version, longer")
        wait_until(lambda: len(daemon.named("file_processed")) == 2, 60, "second version")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    assert {e["outcome"] for e in daemon.named("file_processed")} == {"stored"}
    done = tmp_path / "var" / "done" / "docs"
    assert {p.name for p in done.iterdir()} == {name, "n" * 249 + ".1.txt"}
    assert (done / name).read_text() == "first version"
