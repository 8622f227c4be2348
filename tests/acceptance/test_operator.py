"""Operator commands as a user runs them: `quarantine list | show | retry`, `status` and
`check`, each a `python -m daemon` subprocess against real S3 (SeaweedFS), Postgres and MLflow."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import (
    REPO,
    Daemon,
    Sinks,
    drop,
    free_port,
    proxy_for,
    s3_config,
    via_proxy,
)


def cli(config_path: Path, *args: str, prefix: tuple[str, ...] = ()
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "daemon", *args, "--config",
                           str(config_path)], capture_output=True, text=True, timeout=300,
                          cwd=REPO)


def edit_config(path: Path, section: str, **values: Any) -> None:
    """Change keys of one section of a config file, as an operator would by hand."""
    data = yaml.safe_load(path.read_text())
    data[section] = {**(data.get(section) or {}), **values}
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_quarantined_file_is_listed_shown_and_stored_after_retry(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """A file over max_file_bytes is listed with its reason and shown with its report; with
    the limit raised, `retry --all` puts it back (never over a file in its place) and the next
    `--once` stores it as the same ledger row with a fresh attempt budget."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket,
                     pipeline={"max_file_bytes": "1KiB"})
    zone, quarantine = tmp_path / "zones" / "docs", tmp_path / "var" / "quarantine" / "docs"
    drop(zone, "big.txt", "x" * 2000)
    drop(zone, "fine.txt", "a small file")
    assert Daemon(path, "--once").run() == 1
    [entry] = json_lines(cli(path, "quarantine", "list", "--json").stdout)
    assert entry["path"] == "big.txt" and "max_file_bytes" in entry["reason"]
    table = cli(path, "quarantine", "list").stdout
    assert "big.txt" in table and "max_file_bytes" in table
    shown = json.loads(cli(path, "quarantine", "show", str(entry["id"]), "--json").stdout)
    assert shown["quarantined_file"] == str(quarantine / "big.txt")
    assert shown["error_report"]["ledger_id"] == entry["id"]
    assert "max_file_bytes" in shown["error_report"]["reason"]
    assert shown["ledger"]["stage"] == "quarantined" and shown["ledger"]["attempts"] == 1

    (zone / "big.txt").write_text("someone else's file")
    blocked = cli(path, "quarantine", "retry", "--all")
    assert blocked.returncode == 1 and "not overwritten" in blocked.stdout
    assert (zone / "big.txt").read_text() == "someone else's file"
    (zone / "big.txt").unlink()
    edit_config(path, "pipeline", max_file_bytes="1MiB")
    retried = cli(path, "quarantine", "retry", "--all")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "1 of 1 file(s) put back" in retried.stdout
    assert not list(quarantine.iterdir()), "the file and its .error.json left quarantine"

    again = Daemon(path, "--once")
    assert again.run() == 0, again.problems()
    assert [(e["path"], e["outcome"]) for e in again.named("file_processed")] == [
        ("big.txt", "stored")]
    sinks = Sinks(path)
    assert sorted(d["source_path"] for d in sinks.documents()) == ["big.txt", "fine.txt"]
    [row] = [r for r in sinks.ledger() if r["rel_path"] == "big.txt"]
    assert (row["id"], row["outcome"], row["attempts"]) == (entry["id"], "stored", 0)
    records = {r["sha256"] for r in sinks.mlflow_records() if r.get("status") == "stored"}
    assert hashlib.sha256(b"x" * 2000).hexdigest() in records
    assert cli(path, "quarantine", "list", "--json").stdout == ""


def test_a_running_daemon_takes_back_retried_files(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """A running daemon stores both a file put back as the same version (its limit raised)
    and one fixed while in quarantine (a new version, whose old row ends superseded)."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket,
                     pipeline={"max_file_bytes": "1KiB"})
    zone, quarantine = tmp_path / "zones" / "docs", tmp_path / "var" / "quarantine" / "docs"
    drop(zone, "same.txt", "s" * 2000)
    drop(zone, "fixed.txt", "f" * 2000)
    assert Daemon(path, "--once").run() == 1
    (quarantine / "fixed.txt").write_text("shortened in quarantine")
    edit_config(path, "pipeline", max_file_bytes="1MiB")
    with Daemon(path) as daemon:
        daemon.wait_for("daemon_ready", 120)
        retried = cli(path, "quarantine", "retry", "--all")
        assert retried.returncode == 0, retried.stdout + retried.stderr
        assert "changed in quarantine" in retried.stdout
        for name in ("same.txt", "fixed.txt"):
            daemon.wait_for("file_processed", 60, path=name, outcome="stored")
    rows = {(r["rel_path"], r["outcome"]) for r in Sinks(path).ledger()}
    assert rows == {("same.txt", "stored"), ("fixed.txt", "superseded"), ("fixed.txt", "stored")}
    contents = {d["sha256"] for d in Sinks(path).documents()}
    assert hashlib.sha256(b"shortened in quarantine").hexdigest() in contents


def test_status_shows_oldest_waiting_last_error_and_throughput(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """One file stored, then one stuck behind an unreachable S3: `status --json` names the
    waiting file and its age, its error, and one file finished in the last 5 minutes."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket)
    zone = tmp_path / "zones" / "docs"
    drop(zone, "first.txt", "stored before the outage")
    assert Daemon(path, "--once").run() == 0
    edit_config(path, "storage", endpoint_url=f"http://127.0.0.1:{free_port()}")
    edit_config(path, "pipeline", outage_wait_s=2)
    drop(zone, "second.txt", "waits for S3")
    assert Daemon(path, "--once").run() == 3
    result = cli(path, "status", "--json")
    assert result.returncode == 0, result.stderr
    docs = json.loads(result.stdout)["zones"]["docs"]
    assert docs["states"]["stored"] == 1 and sum(docs["states"].values()) == 2
    assert docs["oldest_waiting"]["path"] == "second.txt"
    assert 0 <= docs["oldest_waiting"]["age_s"] < 300
    assert docs["last_error"]["path"] == "second.txt" and docs["last_error"]["message"]
    assert docs["throughput"]["finished_5m"] == docs["throughput"]["finished_1h"] == 1
    assert docs["throughput"]["per_minute_5m"] == 0.2
    table = cli(path, "status").stdout
    assert "oldest waiting  second.txt (waiting" in table and "1 in 5 min" in table


def _verdicts(output: str) -> dict[str, list[str]]:
    """{name: [the first line of each of its checks]}."""
    found: dict[str, list[str]] = {}
    for line in output.splitlines():
        if line and not line.startswith(" "):
            found.setdefault(line.split()[0], []).append(line)
    return found


def test_check_names_unusable_zone_folders_and_missing_pgvector(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """A zone folder this user may not write and a quarantine folder that cannot be created
    fail `check` with exit 4; the clock agrees with S3's; the pgvector line says whether
    search has pgvector and, without it, that search scans and how to install it. (As root,
    `check` runs without CAP_DAC_OVERRIDE so permission bits bind it too.)"""
    proxy = proxy_for(database_url)  # pgserver's socket folder is closed to it, TCP is not
    zones = [{"name": "docs", "path": "zones/docs"}, {"name": "locked", "path": "zones/locked"},
             {"name": "blocked", "path": "zones/blocked", "quarantine_dir": "in-the-way/q"}]
    try:
        path = s3_config(tmp_path, via_proxy(database_url, proxy), s3_endpoint, bucket,
                         zones=zones)
        (tmp_path / "in-the-way").write_text("a file where a folder should be")
        (tmp_path / "zones" / "locked").chmod(0o555)
        unprivileged = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")
        result = cli(path, "check", prefix=unprivileged if os.geteuid() == 0 else ())
        vector = Sinks(path).query(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    finally:
        proxy.stop()
    verdicts = _verdicts(result.stdout)
    assert result.returncode == 4, result.stdout + result.stderr
    for name in ("postgres", "objects", "mlflow", "clock"):
        assert verdicts[name][0].split()[1] == "ok", verdicts[name]
    zone = {line.split()[2].rstrip(":"): line for line in verdicts["zone"]}
    assert zone["docs"].split()[1] == "ok"
    assert "FAIL" in zone["locked"] and "no write permission" in zone["locked"]
    assert "FAIL" in zone["blocked"] and "in-the-way is not a folder" in zone["blocked"]
    [pgvector] = verdicts["pgvector"]
    if vector:
        assert pgvector.split()[1] == "ok" and "vector(384)" in pgvector
    else:
        assert pgvector.split()[1] == "warn" and "linear scan" in pgvector
        assert "apt install postgresql-" in result.stdout
