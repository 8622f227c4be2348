"""Test helpers: configs on disk, the daemon as a subprocess, and counting what each sink holds."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import boto3
import yaml

from daemon import config
from daemon.config import Settings
from tests.faultproxy import FaultProxy

REPO = Path(__file__).resolve().parent.parent


def proxy_for(url: str) -> FaultProxy:
    """A proxy in front of an http:// or postgresql:// URL (TCP or pgserver's unix socket)."""
    parts = urlsplit(url)
    if parts.hostname:
        return FaultProxy(parts.hostname, parts.port or 5432).start()
    socket_dir = dict(p.split("=", 1) for p in parts.query.split("&"))["host"]
    return FaultProxy(unix_path=f"{socket_dir}/.s.PGSQL.5432").start()


def via_proxy(database_url: str, proxy: FaultProxy) -> str:
    """The same database, reached through the proxy over TCP."""
    parts = urlsplit(database_url)
    user = parts.username or "postgres"
    return f"postgresql://{user}@127.0.0.1:{proxy.port}{parts.path}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def s3_storage(endpoint: str, bucket: str, prefix: str = "dz") -> dict[str, Any]:
    return {"url": f"s3://{bucket}/{prefix}", "endpoint_url": endpoint}


@functools.cache
def mlflow_template() -> bytes:
    """An empty MLflow sqlite store, made once per test process: a new store costs ~1.5 s of
    migrations, paid once here rather than by every daemon a test starts (the quickstart test
    and the very-first-start crash test still make theirs from nothing)."""
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory(prefix="dz-mlflow-") as folder:
        MlflowClient(f"sqlite:///{folder}/mlflow.db").search_experiments()
        return (Path(folder) / "mlflow.db").read_bytes()


def write_config(folder: Path, *, zones: list[dict[str, Any]] | None = None,
                 database: str | dict[str, Any] = "embedded", **sections: Any) -> Path:
    """A config file in `folder` (zones created under it); returns its path. `database` is
    a URL or a whole database section."""
    zones = zones or [{"name": "docs", "path": "zones/docs", "settle_ms": 200}]
    for zone in zones:
        (folder / zone["path"]).mkdir(parents=True, exist_ok=True)
    section = database if isinstance(database, dict) else {"url": database}
    data: dict[str, Any] = {"state_dir": "var", "zones": zones, "database": section}
    data["pipeline"] = {"workers": 4, "retry_base_s": 0.2, "lease_s": 30}
    data.update(sections)
    if "tracking_uri" not in data.get("mlflow", {}):
        (folder / "var").mkdir(exist_ok=True)
        (folder / "var" / "mlflow.db").write_bytes(mlflow_template())
    path = folder / "dropzone.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def s3_config(folder: Path, database_url: str | dict[str, Any], s3_endpoint: str, bucket: str,
              **sections: Any) -> Path:
    """A config on S3 (SeaweedFS) and the test database, with a short MLflow window."""
    sections.setdefault("mlflow", {"window_s": 0.5})
    return write_config(folder, database=database_url, storage=s3_storage(s3_endpoint, bucket),
                        **sections)


def make_corpus(zone: Path, count: int, prefix: str = "batch") -> dict[str, str]:
    """`count` small text files of different lengths under `zone/prefix/`."""
    texts = {f"{prefix}/{i:04d}.txt": f"document {prefix} {i}\n\n" + f"word{i} " * (50 + i % 200)
             for i in range(count)}
    for name, text in texts.items():
        (zone / name).parent.mkdir(parents=True, exist_ok=True)
        (zone / name).write_text(text)
    return texts


def assert_exactly_once(sinks: Sinks, texts: dict[str, str], done: Path | None = None) -> None:
    """One object, one document (each chunk once) and one MLflow record per distinct content,
    nothing more; and, given the done folder, every source file in it."""
    shas = {hashlib.sha256(t.encode()).hexdigest() for t in texts.values()}
    docs = sinks.documents()
    assert sorted(d["sha256"] for d in docs) == sorted(shas)
    assert len(sinks.object_keys()) == len(shas)
    records = Counter(r["sha256"] for r in sinks.mlflow_records()
                      if r.get("status", "stored") == "stored")
    assert set(records) == shas, "every stored content has an MLflow record"
    assert set(records.values()) == {1}, "and only one"
    assert all(d["mlflow_run_id"] for d in docs)
    chunks = Counter((c["document_id"], c["chunk_index"]) for c in sinks.chunks())
    assert set(chunks.values()) <= {1}
    if done is not None:
        moved = sorted(p.relative_to(done).as_posix() for p in done.rglob("*") if p.is_file())
        assert moved == sorted(texts)


def drop(zone_dir: Path, name: str, text: str) -> Path:
    """Write a file the way a careful producer does: under a temp name, then rename."""
    path = zone_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text, encoding="utf-8")
    tmp.rename(path)
    return path


def wait_until(check: Callable[[], Any], timeout_s: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Sinks:
    """What the object store, Postgres and MLflow hold for one config."""

    def __init__(self, config_path: Path) -> None:
        self.settings: Settings = config.load(config_path)

    def database_url(self) -> str:
        url = self.settings.database.url
        if url != "embedded":
            return url
        from daemon.database import EMBEDDED_DB, start_embedded, with_database

        return with_database(start_embedded(self.settings.state_dir), EMBEDDED_DB)

    def query(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        async def fetch() -> list[dict[str, Any]]:
            conn = await asyncpg.connect(self.database_url())
            try:
                return [dict(r) for r in await conn.fetch(sql, *args)]
            except asyncpg.UndefinedTableError:  # the daemon has not created its schema yet
                return []
            finally:
                await conn.close()
        with ThreadPoolExecutor(1) as pool:  # usable from async tests too
            return pool.submit(lambda: asyncio.run(fetch())).result()

    def object_keys(self) -> list[str]:
        storage = self.settings.storage
        if not storage.is_s3:
            root = Path(storage.url)
            return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                          if p.is_file()) if root.exists() else []
        client = boto3.client("s3", endpoint_url=storage.endpoint_url, region_name="us-east-1")
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=storage.bucket,
                                                                  Prefix=storage.prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def documents(self) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM documents ORDER BY id")

    def chunks(self) -> list[dict[str, Any]]:
        return self.query("SELECT document_id, chunk_index, content, model FROM "
                          "document_embeddings ORDER BY document_id, chunk_index")

    def ledger(self) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM dz_files ORDER BY id")

    def mlflow_client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.settings.mlflow.tracking_uri)

    def mlflow_runs(self) -> list[Any]:
        client = self.mlflow_client()
        experiment = client.get_experiment_by_name(self.settings.mlflow.experiment)
        if experiment is None:
            return []
        return list(client.search_runs([experiment.experiment_id], max_results=50_000))

    def mlflow_records(self) -> list[dict[str, Any]]:
        """Per-file records: lines of batch artifacts, or one per per-file run."""
        client, records = self.mlflow_client(), []
        for run in self.mlflow_runs():
            tags = run.data.tags
            if "dropzone.sha256" in tags:
                records.append({"sha256": tags["dropzone.sha256"], "run_id": run.info.run_id,
                                "source_path": tags.get("dropzone.source_path")})
            elif "dropzone.batch_id" in tags:
                records.extend(_artifact_lines(client, run.info.run_id))
        return records


def _artifact_lines(client: Any, run_id: str) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(run_id, "dropzone/files.jsonl", folder)
        except Exception:  # a run killed before its artifact was written has no records
            return []
        lines = Path(path).read_text().splitlines()
    return [dict(json.loads(line), run_id=run_id) for line in lines if line.strip()]


class Daemon:
    """`python -m daemon` as a user runs it, its JSON log lines collected as they come."""

    def __init__(self, config_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.command = [sys.executable, "-m", "daemon", *args, "--config", str(config_path),
                        "--log-format", "json"]
        self.env = {**os.environ, **(env or {})}
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Daemon:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, env=self.env,
                                        cwd=REPO)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.raw.append(line)
            with contextlib.suppress(ValueError):  # a line that is not JSON is kept in `raw`
                self.events.append(json.loads(line))

    def run(self, timeout_s: float = 300) -> int:
        """Start, wait for the exit, return the exit code."""
        self.start()
        return self.wait(timeout_s)

    def wait(self, timeout_s: float = 300) -> int:
        assert self.process is not None
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            tail = "".join(self.raw[-40:])
            raise AssertionError(f"no exit after {timeout_s} s; the log ends:\n{tail}") from None
        time.sleep(0.05)  # let the reader thread take the last lines
        return code

    def wait_for(self, event: str, timeout_s: float = 60, **fields: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in self.events if e.get("event") == event and
                         all(e.get(k) == v for k, v in fields.items())), None)
        return wait_until(found, timeout_s, f"log event {event} {fields}")  # type: ignore[no-any-return]

    def problems(self) -> list[dict[str, Any]]:
        """Error lines, for assertion messages."""
        return [e for e in self.events if e.get("level") == "error"]

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def output(self) -> str:
        return "".join(self.raw)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


async def pgvector_available(url: str) -> bool:
    """Whether the server at `url` could install pgvector."""
    conn = await asyncpg.connect(url)
    try:
        return bool(await conn.fetchval(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"))
    finally:
        await conn.close()


def settings_for(folder: Path, database_url: str | dict[str, Any], **sections: Any) -> Settings:
    """Settings for in-process tests, from the same YAML a user would write."""
    path = write_config(folder, database=database_url, **sections)
    return config.load(path, env={})


def stop_embedded(pgdata: Path) -> None:
    """Stop the server before its folder goes: pgserver would stop it only at this process's
    exit, by which time the folder is gone, and a postmaster without its folder lingers."""
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

    with contextlib.suppress(Exception):  # already stopped: nothing to do
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata,
               user="pgserver" if os.geteuid() == 0 else None)
