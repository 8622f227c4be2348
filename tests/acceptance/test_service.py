"""The daemon as a systemd service: sd_notify over a real socket, and SIGHUP reloads."""

from __future__ import annotations

import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    Daemon,
    Sinks,
    drop,
    free_port,
    make_corpus,
    proxy_for,
    s3_config,
    wait_until,
)


class NotifySocket:
    """A datagram socket standing in for systemd's: every message it gets, with its time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, list[str]]] = []
        self.closed = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while not self.closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode().split("\n")))

    def lines(self) -> list[str]:
        return [line for _, message in self.messages for line in message]

    def count(self, line: str) -> int:
        return self.lines().count(line)

    def statuses(self) -> list[str]:
        return [line.removeprefix("STATUS=") for line in self.lines()
                if line.startswith("STATUS=")]

    def wait_for(self, line: str, after: int = 0, timeout_s: float = 60) -> None:
        wait_until(lambda: self.count(line) > after, timeout_s, f"{line} on NOTIFY_SOCKET")


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.closed = True
    sock.reader.join()
    sock.sock.close()


def zone(name: str) -> dict[str, Any]:
    return {"name": name, "path": f"zones/{name}", "settle_ms": 200}


def test_notifies_systemd_and_serves_metrics(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str,
        notify: NotifySocket) -> None:
    """While S3 refuses connections there is no READY=1 but a STATUS saying what is awaited,
    and /readyz answers 503 while /healthz answers 200; once S3 answers, READY=1 comes with
    daemon_ready and /readyz turns 200; WATCHDOG=1 keeps coming; STATUS= and
    /metrics carry the live counts; SIGTERM sends STOPPING=1."""
    proxy, port = proxy_for(s3_endpoint), free_port()
    proxy.set("refuse")
    path = s3_config(tmp_path, database_url, f"http://127.0.0.1:{proxy.port}", bucket,
                     metrics={"listen": f"127.0.0.1:{port}"}, mlflow={"window_s": 0.5})
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    try:
        with Daemon(path, env=env) as daemon:
            daemon.wait_for("not_ready", 120, dependency="objects")
            wait_until(lambda: any("waiting for objects" in s for s in notify.statuses()), 30,
                       "a STATUS naming S3")
            assert notify.count("READY=1") == 0 and not daemon.named("daemon_ready")
            assert get(port, "/readyz") == (503, "starting") and get(port, "/healthz")[0] == 200
            proxy.set("pass")
            daemon.wait_for("daemon_ready", 120)
            notify.wait_for("READY=1")
            assert get(port, "/readyz") == (200, "ready")
            pings = notify.count("WATCHDOG=1")  # every 0.5 s (the rate: tests/unit)
            wait_until(lambda: notify.count("WATCHDOG=1") - pings >= 3, 30, "watchdog pings")
            drop(tmp_path / "zones" / "docs", "a.txt", "a file for the status line")
            daemon.wait_for("file_processed", 60, outcome="stored")
            wait_until(lambda: any("1 stored" in s for s in notify.statuses()), 30, "a count")
            samples = scrape(port)
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(60) == 0
    finally:
        proxy.stop()
    assert notify.count("STOPPING=1") == 1 and notify.count("READY=1") == 1
    assert all(len(s) <= 200 for s in notify.statuses())
    assert samples[("dropzone_files_total", (("outcome", "stored"), ("zone", "docs")))] == 1
    assert samples[("dropzone_queue_depth", (("zone", "docs"),))] == 0
    assert samples[("dropzone_stage_duration_seconds_count", (("stage", "upload"),))] == 1
    assert any(name == "dropzone_retries_total" and dict(labels)["cause"].startswith("probe_")
               for name, labels in samples), samples


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode().strip()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode().strip()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by the Prometheus client's own parser."""
    status, text = get(port, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text + "\n") for s in family.samples}


def test_sighup_reloads_zones_and_keeps_waiting_files(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str,
        notify: NotifySocket) -> None:
    """SIGHUP with a zone added picks up its files. A zone removed while its 40 files wait
    out an S3 outage takes none of them on (none lost, none quarantined), and adding it back
    finishes them all exactly once. An invalid file is refused and the running zones are
    kept. Each reload is RELOADING=1 then READY=1."""
    proxy = proxy_for(s3_endpoint)
    path = s3_config(tmp_path, database_url, f"http://127.0.0.1:{proxy.port}", bucket)
    first = yaml.safe_load(path.read_text())
    try:
        with Daemon(path, env={"NOTIFY_SOCKET": str(notify.path)}) as daemon:
            daemon.wait_for("daemon_ready", 120)
            (tmp_path / "zones" / "more").mkdir()
            write(path, {**first, "zones": [zone("docs"), zone("more")]})
            reload(daemon, notify, 1)
            assert daemon.wait_for("config_reloaded")["added"] == ["more"]
            drop(tmp_path / "zones" / "more", "new.txt", "a file in the added zone")
            daemon.wait_for("file_processed", 60, zone="more", outcome="stored")

            proxy.set("refuse")
            texts = make_corpus(tmp_path / "zones" / "docs", 40)
            daemon.wait_for("dependency_down", 60, dependency="objects")
            write(path, {**first, "zones": [zone("more")]})
            reload(daemon, notify, 2)
            assert daemon.named("config_reloaded")[-1]["removed"] == ["docs"]
            proxy.set("pass")

            path.write_text("zones: [\n")  # broken YAML
            reload(daemon, notify, 3)
            assert "dropzone.yaml" in daemon.wait_for("reload_refused")["error"]
            drop(tmp_path / "zones" / "more", "after.txt", "still watched after a refused reload")
            daemon.wait_for("file_processed", 60, path="after.txt", outcome="stored")
            time.sleep(2)
            assert not daemon.named("file_processed")[2:], "a removed zone's file was taken"
            assert len(list((tmp_path / "zones" / "docs").rglob("*.txt"))) == 40

            write(path, {**first, "zones": [zone("docs"), zone("more")]})
            reload(daemon, notify, 4)
            wait_until(lambda: len(daemon.named("file_processed")) == 42, 120, "every file")
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(60) == 0
    finally:
        proxy.stop()
    expected = ("reload_refused", "dependency_down")
    problems = [e for e in daemon.problems() if e["event"] not in expected]
    assert not problems, problems
    assert {e["outcome"] for e in daemon.named("file_processed")} == {"stored"}
    assert len({d["source_path"] for d in Sinks(path).documents()}) == 42 == len(texts) + 2


def write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def reload(daemon: Daemon, notify: NotifySocket, nth: int) -> None:
    """SIGHUP, then wait for the nth RELOADING=1 and the READY=1 that ends it."""
    readies = notify.count("READY=1")
    daemon.signal(signal.SIGHUP)
    notify.wait_for("RELOADING=1", nth - 1)
    notify.wait_for("READY=1", readies)
    monotonic = [line for line in notify.lines() if line.startswith("MONOTONIC_USEC=")]
    assert len(monotonic) == nth
