"""What lands in the bucket is what its key says: S3 goes away after files are hashed, and
meanwhile they are rewritten in place (even with their old mtime put back), truncated, swapped
for symlinks to files outside the zone, or have their folder swapped for one. When S3 is back,
every object's bytes hash to the sha256 in its key, every object is named by a document, and
no byte from outside the zone was uploaded: in daemon mode and in `--once`."""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.faultproxy import FaultProxy
from tests.helpers import Daemon, Sinks, proxy_for, s3_storage, wait_until, write_config

MIB = 1024 * 1024
SECRET = b"OUTSIDE-THE-ZONE" * 65536  # 1 MiB, as large as the files whose place it takes


@pytest.fixture
def s3_proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    proxy = proxy_for(s3_endpoint)
    yield proxy
    proxy.stop()


def drop(zone: Path) -> None:
    """Files of each size class: kept in memory (< 256 KiB), one PUT, multipart (>= 5 MiB)."""
    sizes = {"small.txt": 10_000, "keep.txt": 20_000, "same-mtime.bin": 2 * MIB,
             "truncated.bin": 2 * MIB, "big.bin": 6 * MIB, "link.txt": MIB,
             "folder/inner.txt": MIB}
    for name, size in sizes.items():
        (zone / name).parent.mkdir(parents=True, exist_ok=True)
        (zone / name).write_bytes(os.urandom(size))


def rewrite_in_place(path: Path, keep_mtime: bool = False) -> None:
    """New bytes, same size, same inode; with `keep_mtime`, its version looks unchanged."""
    st = path.stat()
    with open(path, "r+b") as out:
        out.write(os.urandom(st.st_size))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def tamper(zone: Path, outside: Path) -> None:
    """Everything a user or another program may do to files waiting for their upload."""
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "inner.txt").write_bytes(SECRET)
    rewrite_in_place(zone / "small.txt")
    rewrite_in_place(zone / "same-mtime.bin", keep_mtime=True)
    rewrite_in_place(zone / "big.bin", keep_mtime=True)
    with open(zone / "truncated.bin", "r+b") as out:
        out.truncate(MIB)
    (zone / "link.txt").unlink()
    (zone / "link.txt").symlink_to(outside / "secret.txt")
    (zone / "folder" / "inner.txt").unlink()
    (zone / "folder").rmdir()
    (zone / "folder").symlink_to(outside)


def all_waiting_for_upload(sinks: Sinks, files: int) -> bool:
    rows = sinks.query("SELECT stage FROM dz_files")
    return len(rows) == files and all(r["stage"] == "upload" for r in rows)


def settled(sinks: Sinks) -> bool:
    rows = sinks.query("SELECT stage FROM dz_files")
    return bool(rows) and all(r["stage"] in ("done", "quarantined") for r in rows)


def assert_objects_are_what_their_keys_say(sinks: Sinks) -> None:
    storage = sinks.settings.storage
    client = boto3.client("s3", endpoint_url=storage.endpoint_url, region_name="us-east-1")
    named = {d["object_url"] for d in sinks.documents()}
    keys = sinks.object_keys()
    assert keys, "something was stored"
    for key in keys:
        body = client.get_object(Bucket=storage.bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() in key.split("/"), f"{key} holds other bytes"
        assert b"OUTSIDE-THE-ZONE" not in body, f"{key} holds bytes from outside the zone"
        assert f"s3://{storage.bucket}/{key}" in named, f"{key} is named by no document"


@pytest.mark.parametrize("mode", ["daemon", "once"])
def test_objects_hold_exactly_their_keys_content_through_an_outage_and_tampering(
        tmp_path: Path, database_url: str, bucket: str, s3_proxy: FaultProxy, mode: str) -> None:
    storage = {**s3_storage(f"http://127.0.0.1:{s3_proxy.port}", bucket),
               "multipart_threshold": "5MiB"}
    path = write_config(tmp_path, database=database_url, storage=storage,
                        mlflow={"window_s": 0.5})
    zone, sinks = tmp_path / "zones" / "docs", Sinks(path)
    drop(zone)
    s3_proxy.set("refuse")
    with Daemon(path, *(["--once"] if mode == "once" else [])) as daemon:
        wait_until(lambda: all_waiting_for_upload(sinks, 7), 120, "every file hashed, waiting")
        tamper(zone, tmp_path / "outside")
        s3_proxy.set("pass")
        wait_until(lambda: settled(sinks), 180, "every file at its end")
        if mode == "daemon":
            wait_until(lambda: len(sinks.documents()) >= 3 and settled(sinks), 60, "new versions")
            daemon.signal(signal.SIGTERM)
        assert daemon.wait(120) == 0, daemon.output()[-3000:]
    rows = sinks.ledger()
    assert {r["stage"] for r in rows} == {"done"}, "nothing quarantined, nothing left"
    assert any(r["rel_path"] == "keep.txt" and r["outcome"] == "stored" for r in rows)
    # Whether a tampered file ends superseded or stored depends on when its last read fell
    # (before or after the tampering); either way what was stored is what was hashed:
    assert_objects_are_what_their_keys_say(sinks)
