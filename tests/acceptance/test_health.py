"""What an operator is told about the daemon's dependencies: an MLflow store the installed MLflow
cannot open, and a dependency that goes down and comes back (`status`, and the log)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from tests.helpers import REPO, Daemon, drop, proxy_for, wait_until, write_config

UNKNOWN_REVISION = "fedcba987654"  # no MLflow has this schema revision


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", *args, "--config", str(config_path)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def set_store_revision(store: Path, revision: str) -> None:
    with closing(sqlite3.connect(store)) as db, db:
        db.execute("UPDATE alembic_version SET version_num = ?", (revision,))


def test_a_store_from_a_newer_mlflow_is_refused_at_start_and_by_check(
        tmp_path: Path, database_url: str) -> None:
    """A store whose schema revision the installed MLflow does not know stops the daemon and
    fails `check` with exit code 3, on one line naming both versions and the way out."""
    from mlflow.version import VERSION

    config_path = write_config(tmp_path, database=database_url)
    set_store_revision(tmp_path / "var" / "mlflow.db", UNKNOWN_REVISION)
    drop(tmp_path / "zones" / "docs", "a.txt", "waits for a usable MLflow")
    with Daemon(config_path) as daemon:
        assert daemon.wait(timeout_s=120) == 3, daemon.output()
    said = [e for e in daemon.events if UNKNOWN_REVISION in str(e)]
    assert [e["event"] for e in said] == ["dependency_unreachable"], daemon.output()
    for words in (f"MLflow {VERSION}", "pip install -U", "restore a backup"):
        assert words in said[0]["error"]
    assert not daemon.named("not_ready") and not daemon.named("retrying")
    check = cli(config_path, "check")
    assert check.returncode == 3, check.stdout + check.stderr
    lines = [line for line in check.stdout.splitlines() if line.startswith("mlflow")]
    assert len(lines) == 1 and UNKNOWN_REVISION in lines[0] and VERSION in lines[0], check.stdout
    assert "pip install -U" in lines[0]


def test_a_store_from_an_older_mlflow_is_upgraded_with_a_backup(
        tmp_path: Path, database_url: str) -> None:
    """A store one schema revision behind the installed MLflow is copied aside before it is
    upgraded (the way back to the older MLflow), and used: `--once` records the file."""
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config

    config_path = write_config(tmp_path, database=database_url)
    store = tmp_path / "var" / "mlflow.db"
    command.downgrade(_get_alembic_config(f"sqlite:///{store}"), "-1")  # type: ignore[no-untyped-call]
    with closing(sqlite3.connect(store)) as db:
        (older,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    drop(tmp_path / "zones" / "docs", "a.txt", "recorded in an upgraded store")
    with Daemon(config_path, "--once") as daemon:
        assert daemon.wait(timeout_s=300) == 0, daemon.output()
    upgraded = daemon.named("mlflow_store_upgraded")
    assert len(upgraded) == 1 and upgraded[0]["revision"] == older, daemon.output()
    backup = tmp_path / "var" / f"mlflow.db.{older}.bak"
    assert backup.is_file()
    assert cli(config_path, "check").returncode == 0
    set_store_revision(store, UNKNOWN_REVISION)  # as if a newer MLflow had written it since
    check = cli(config_path, "check")
    assert check.returncode == 3 and f"put back {backup}" in check.stdout, check.stdout


def status_of(config_path: Path, dependency: str) -> dict[str, Any]:
    result = cli(config_path, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["dependencies"][dependency]  # type: ignore[no-any-return]


def said_about(daemon: Daemon, words: str) -> list[dict[str, Any]]:
    """Warning and error lines that mention `words`."""
    return [e for e in daemon.events
            if e.get("level") in ("warning", "error") and words in json.dumps(e)]


def test_mlflow_down_is_told_once_shown_by_status_and_told_once_when_back(
        tmp_path: Path, database_url: str, mlflow_server: str) -> None:
    """MLflow away: one `dependency_down` line and nothing more about it while it stays away,
    `status --json` shows it down with its error, since when and the files waiting for it;
    back: one `dependency_recovered` line, and `status` shows it up."""
    proxy = proxy_for(mlflow_server)
    try:
        mlflow = {"tracking_uri": f"http://127.0.0.1:{proxy.port}", "window_s": 0.5,
                  "experiment": f"health-{tmp_path.name}"}
        config_path = write_config(tmp_path, database=database_url, mlflow=mlflow)
        zone = tmp_path / "zones" / "docs"
        with Daemon(config_path) as daemon:
            daemon.wait_for("daemon_ready", 120)
            proxy.set("refuse")
            for name in ("a.txt", "b.txt"):
                drop(zone, name, f"{name} waits for MLflow")
            daemon.wait_for("dependency_down", 120, dependency="mlflow")
            down = wait_until(lambda: (s := status_of(config_path, "mlflow"))["waiting_files"]
                              == 2 and s, 60, "status: two files waiting for mlflow")
            assert down["up"] is False and down["last_error"] and down["since"], down
            told = len(said_about(daemon, "mlflow"))
            time.sleep(15)  # the breaker probes MLflow several times meanwhile
            assert said_about(daemon, "mlflow")[told:] == []
            proxy.set("pass")
            daemon.wait_for("dependency_recovered", 120, dependency="mlflow")
            wait_until(lambda: len(daemon.named("file_processed")) == 2, 120, "files finished")
            up = wait_until(lambda: (s := status_of(config_path, "mlflow"))["up"] and s, 60,
                            "status: mlflow up")
            assert up["waiting_files"] == 0 and up["last_error"], up  # the last error stays
            assert len(daemon.named("dependency_down")) == 1
            assert len(daemon.named("dependency_recovered")) == 1
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(60) == 0
        assert status_of(config_path, "mlflow")["up"] is None  # no running daemon says
    finally:
        proxy.stop()
