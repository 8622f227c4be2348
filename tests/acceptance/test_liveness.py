"""Liveness, for real: a Postgres that stops answering mid-run, and two daemons that share a
hostname and a pid (each in its own PID namespace) where one is killed -9."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.faultproxy import FaultProxy
from tests.helpers import (
    Daemon,
    Sinks,
    assert_exactly_once,
    make_corpus,
    proxy_for,
    s3_config,
    s3_storage,
    via_proxy,
    wait_until,
    write_config,
)

LEASE_S = 5.0  # the shortest lease allowed
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--uts", "--kill-child"]


def test_a_postgres_that_stops_answering_mid_run_times_out_and_recovers(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """Every Postgres connection freezes mid-run (accepted, never answered, for good), and new
    ones too for 5 s: queries time out after command_timeout_s instead of hanging, files are
    retried, and once new connections answer every file ends stored exactly once."""
    proxy = proxy_for(database_url)
    try:
        database = {"url": via_proxy(database_url, proxy), "command_timeout_s": 2,
                    "connect_timeout_s": 2}
        path = s3_config(tmp_path, database, s3_endpoint, bucket)
        texts = make_corpus(tmp_path / "zones" / "docs", 80)
        sinks = Sinks(path)
        with Daemon(path, "--once") as daemon:
            wait_until(lambda: len(sinks.documents()) >= 10, 120, "10 documents")
            proxy.set("blackhole")
            time.sleep(5)
            proxy.set("pass")
            assert daemon.wait(120) == 0, daemon.problems()
        assert any("TimeoutError" in str(e.get("error")) for e in daemon.events)
        assert_exactly_once(sinks, texts)
    finally:
        proxy.stop()


def namespaced(path: Path) -> Daemon:
    """A daemon that is pid 1 of a PID namespace of its own (with its own /proc), under the
    same hostname as every other."""
    daemon = Daemon(path)
    daemon.command = [*UNSHARE, *daemon.command]
    return daemon.start()


def host_pid(daemon: Daemon) -> int:
    """The daemon's pid as this namespace sees it: the child `unshare` forked."""
    assert daemon.process is not None
    pid = daemon.process.pid
    return int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])


def claims_of(sinks: Sinks, owner: str) -> list[int]:
    rows = sinks.query("SELECT id FROM dz_files WHERE claimed_by = $1", owner)
    return [r["id"] for r in rows]


@pytest.fixture
def s3_slow(s3_endpoint: str) -> object:
    proxy = proxy_for(s3_endpoint)
    proxy.set("slow", delay_s=0.1)  # uploads take a while: claims are always held
    yield proxy
    proxy.stop()


def test_same_hostname_and_pid_in_two_namespaces_kill_9_takes_over_after_the_lease(
        tmp_path: Path, database_url: str, bucket: str, s3_slow: FaultProxy) -> None:
    """Two daemons, each pid 1 of its own PID namespace on the same host: neither takes the
    other's live claims; once one is killed -9 the other takes its files over only after the
    lease, and every file ends once in every sink."""
    if subprocess.run([*UNSHARE, "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare (PID namespaces) is not permitted here")
    storage = s3_storage(f"http://127.0.0.1:{s3_slow.port}", bucket)
    path = write_config(tmp_path, database=database_url, storage=storage,
                        pipeline={"workers": 2, "batch_files": 2, "lease_s": LEASE_S,
                                  "retry_base_s": 0.2}, mlflow={"window_s": 0.5})
    sinks, zone = Sinks(path), tmp_path / "zones" / "docs"
    first = namespaced(path)
    second = Daemon(path)  # started once the first is up: their start times differ too
    try:
        owners = [first.wait_for("daemon_ready", 120)["owner"]]
        second = namespaced(path)
        owners.append(second.wait_for("daemon_ready", 120)["owner"])
        assert owners[0] != owners[1]
        assert owners[0].split(":")[:2] == owners[1].split(":")[:2], "same host, same pid"
        texts = make_corpus(zone, 60)
        wait_until(lambda: len(sinks.documents()) >= 15 and claims_of(sinks, owners[0]), 180,
                   "15 documents, and claims held by the first daemon")
        assert not first.named("claims_reaped") and not second.named("claims_reaped")
        assert not first.named("lease_lost") and not second.named("lease_lost")
        os.kill(host_pid(first), signal.SIGKILL)
        killed_at = time.monotonic()
        assert claims_of(sinks, owners[0]), "it died holding claims"
        wait_until(lambda: not claims_of(sinks, owners[0]), 60, "its claims to be freed")
        assert time.monotonic() - killed_at >= LEASE_S / 2, "freed before its lease ran out"
        wait_until(lambda: not list(zone.rglob("*.txt")), 180, "an empty zone")
        os.kill(host_pid(second), signal.SIGTERM)
        assert second.wait(60) == 0
    finally:
        for daemon in (first, second):
            with contextlib.suppress(Exception):
                daemon.__exit__()
    assert_exactly_once(sinks, texts, tmp_path / "var" / "done" / "docs")
