"""Bad input: every odd thing a drop folder can hold gets one clear log line and a defined
outcome, and the daemon keeps running."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import psutil

from tests.helpers import (
    Daemon,
    Sinks,
    drop,
    proxy_for,
    s3_config,
    via_proxy,
    wait_until,
    write_config,
)

ODD_NAMES = [
    "with space.txt", "ünïcödé ñame.txt", "new\nline.txt", "ctrl\x01\x07bell.txt",
    "dots..in..name.txt", "-leading-dash.txt", "quote'\"and;semicolon.txt", "日本語.md",
]


def long_path(zone: Path) -> str:
    """A file more than 1,000 bytes deep (four 240-byte folders and a 200-byte name)."""
    folders = [f"{'d' * 238}{i:02d}" for i in range(4)]
    return "/".join([*folders, "n" * 196 + ".txt"])


def test_odd_names_are_stored_with_keys_under_the_prefix(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """Spaces, unicode, newlines, control characters, dots, quotes, a 1,000+ byte path and a
    name that is not UTF-8: all stored, keys stay under the prefix, logs stay JSON lines."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket)
    zone = tmp_path / "zones" / "docs"
    names = [*ODD_NAMES, long_path(zone)]
    for i, name in enumerate(names):
        (zone / name).parent.mkdir(parents=True, exist_ok=True)
        (zone / name).write_text(f"odd name number {i}")
    raw = bytes(zone) + b"/caf\xe9 latin-1.txt"
    with open(raw, "wb") as out:
        out.write(b"a name that is not UTF-8")
    daemon = Daemon(path, "--once")
    assert daemon.run() == 0, daemon.problems()
    assert len(daemon.raw) == len(daemon.events), "every log line is one JSON object"
    sinks = Sinks(path)
    stored = {d["source_path"] for d in sinks.documents()}
    assert stored == {*names, "caf\\xe9 latin-1.txt"}
    assert all(key.startswith("dz/dropzones/document/") for key in sinks.object_keys())
    assert all(".." not in key.split("/") and "\n" not in key for key in sinks.object_keys())
    done = tmp_path / "var" / "done" / "docs"
    assert (done / os.fsdecode(b"caf\xe9 latin-1.txt")).exists()
    assert not list(zone.rglob("*.*"))


def test_special_files_are_never_followed_or_opened(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """Symlinks (out of the zone, to a folder, in a loop), a FIFO, a socket and a device are
    skipped with one line each; nothing outside the zone is read; nothing blocks."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket)
    zone, outside = tmp_path / "zones" / "docs", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("TOP SECRET outside the zone")
    (zone / "to-secret.txt").symlink_to(outside / "secret.txt")
    (zone / "to-folder").symlink_to(outside)
    (zone / "loop").symlink_to(zone / "loop")
    os.mkfifo(zone / "pipe.txt")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(zone / "sock.txt"))
    special = {"to-secret.txt", "to-folder", "loop", "pipe.txt", "sock.txt"}
    if os.geteuid() == 0:
        os.mknod(zone / "null.txt", 0o600 | 0o020000, os.makedev(1, 3))
        special.add("null.txt")
    drop(zone, "real.txt", "the only regular file")
    daemon = Daemon(path, "--once")
    assert daemon.run(120) == 0, daemon.problems()
    server.close()
    assert {e["path"] for e in daemon.named("file_skipped")} == special
    assert len(daemon.named("file_skipped")) == len(special)
    sinks = Sinks(path)
    assert [d["source_path"] for d in sinks.documents()] == ["real.txt"]
    assert not any("TOP SECRET" in c["content"] for c in sinks.chunks())
    assert len(sinks.object_keys()) == 1


def test_empty_oversize_and_malformed_files(tmp_path: Path, database_url: str, s3_endpoint: str,
                                            bucket: str) -> None:
    """An empty file is stored with no chunks; one over max_file_bytes is quarantined with
    its reason; Latin-1 text is decoded as such and binary posing as text is stored without
    chunks, neither crashing anything."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket,
                     pipeline={"max_file_bytes": "1KiB"})
    zone = tmp_path / "zones" / "docs"
    (zone / "empty.txt").write_bytes(b"")
    (zone / "big.txt").write_bytes(b"x" * 1025)
    (zone / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (zone / "binary.txt").write_bytes(bytes(range(256)))
    daemon = Daemon(path, "--once")
    assert daemon.run() == 1
    outcomes = {e["path"]: e["outcome"] for e in daemon.named("file_processed")}
    assert outcomes == {"empty.txt": "stored", "big.txt": "quarantined", "latin1.txt": "stored",
                        "binary.txt": "stored"}
    docs = {d["source_path"]: json.loads(d["metadata"]) for d in Sinks(path).documents()}
    assert docs["empty.txt"]["chars"] == 0
    assert docs["latin1.txt"]["encoding"] == "cp1252"
    assert docs["binary.txt"]["extraction"] == "binary"
    report = tmp_path / "var" / "quarantine" / "docs" / "big.txt.error.json"
    assert "max_file_bytes" in json.loads(report.read_text())["reason"]


def test_an_unreadable_file_is_quarantined(tmp_path: Path, database_url: str, s3_endpoint: str,
                                           bucket: str) -> None:
    """A file the daemon may not read: quarantined with the reason, the rest carries on.
    (As root, the daemon runs without CAP_DAC_OVERRIDE so permissions bind it too.)"""
    proxy = proxy_for(database_url)  # pgserver's socket folder is closed to it, TCP is not
    path = s3_config(tmp_path, via_proxy(database_url, proxy), s3_endpoint, bucket)
    zone = tmp_path / "zones" / "docs"
    drop(zone, "fine.txt", "readable")
    (zone / "locked.txt").write_text("not for you")
    (zone / "locked.txt").chmod(0)
    daemon = Daemon(path, "--once")
    if os.geteuid() == 0:
        daemon.command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
                          *daemon.command]
    try:
        assert daemon.run() == 1, daemon.problems()
        [bad] = [e for e in daemon.named("file_processed") if e["outcome"] == "quarantined"]
        assert bad["path"] == "locked.txt" and "Permission denied" in bad["error"]
        assert (tmp_path / "var" / "quarantine" / "docs" / "locked.txt.error.json").exists()
        assert [d["source_path"] for d in Sinks(path).documents()] == ["fine.txt"]
    finally:
        proxy.stop()


def test_names_reused_renames_and_folders_that_come_and_go(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """Same name with new content is a new version; a temp name renamed into place is taken
    once, under its final name; a zone folder deleted and recreated is watched again."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket)
    zone = tmp_path / "zones" / "docs"
    with Daemon(path) as daemon:
        daemon.wait_for("daemon_ready", 120)
        drop(zone, "report.txt", "first version")
        daemon.wait_for("file_processed", 60, path="report.txt")
        drop(zone, "report.txt", "second version, longer")
        wait_until(lambda: len(daemon.named("file_processed")) == 2, 60, "second version")
        part = zone / ".upload.txt.part"
        part.write_text("written under a temporary name")
        time.sleep(1.0)
        part.rename(zone / "upload.txt")
        daemon.wait_for("file_processed", 60, path="upload.txt")
        zone.rmdir()
        daemon.wait_for("zone_missing", 30)
        zone.mkdir()
        daemon.wait_for("zone_back", 30)
        drop(zone, "after.txt", "dropped into the recreated folder")
        daemon.wait_for("file_processed", 30, path="after.txt")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    docs = sorted(d["source_path"] for d in Sinks(path).documents())
    assert docs == ["after.txt", "report.txt", "report.txt", "upload.txt"]
    done = tmp_path / "var" / "done" / "docs"
    assert sorted(p.name for p in done.iterdir()) == ["after.txt", "report.1.txt", "report.txt",
                                                     "upload.txt"]


def test_polled_and_rescan_only_zones_find_their_files(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """Where events do not arrive: a polling zone and a rescan-only zone still take files."""
    zones = [{"name": "polled", "path": "zones/polled", "settle_ms": 200, "watch": "poll"},
             {"name": "scanned", "path": "zones/scanned", "settle_ms": 200, "watch": "rescan"}]
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket, zones=zones,
                     pipeline={"rescan_s": 2})
    with Daemon(path) as daemon:
        daemon.wait_for("daemon_ready", 120)
        drop(tmp_path / "zones" / "polled", "p.txt", "found by polling")
        drop(tmp_path / "zones" / "scanned", "s.txt", "found by a rescan")
        daemon.wait_for("file_processed", 60, path="p.txt")
        daemon.wait_for("file_processed", 60, path="s.txt")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0


def burst(zone: Path, count: int) -> None:
    """`count` small files, a thousand per folder, as fast as they can be written."""
    for i in range(count):
        path = zone / f"f{i // 1000}" / f"{i:05d}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"burst file {i}")


def test_ten_thousand_files_at_once(tmp_path: Path, database_url: str) -> None:
    """10,000 files dropped at once into a running daemon: every one recorded in the ledger,
    memory stays bounded, and SIGTERM still drains promptly."""
    path = write_config(tmp_path, database=database_url)
    zone = tmp_path / "zones" / "docs"
    sinks, peak = Sinks(path), [0]
    with Daemon(path) as daemon:
        daemon.wait_for("daemon_ready", 120)
        assert daemon.process is not None
        proc = psutil.Process(daemon.process.pid)
        writer = threading.Thread(target=burst, args=(zone, 10_000))
        writer.start()

        def recorded() -> bool:
            peak[0] = max(peak[0], proc.memory_info().rss)
            return bool(sinks.query("SELECT count(*) AS n FROM dz_files")[0]["n"] == 10_000)
        wait_until(recorded, 180, "10,000 files in the ledger")
        writer.join()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    assert peak[0] < 400 * 1024**2, f"peak RSS {peak[0] / 1024**2:.0f} MiB"
    paths = {r["rel_path"] for r in sinks.query("SELECT rel_path FROM dz_files")}
    assert len(paths) == 10_000
