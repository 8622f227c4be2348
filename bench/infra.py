"""What every contender stands on: moto as a real separate S3 endpoint, throwaway Postgres
databases and buckets, and subprocesses that are timed and never left behind.

Every process started here is in its own session (process group), so killing it kills what it
started too, and it is killed in a `finally`, so an exception, Ctrl-C or SIGTERM in the harness
leaves nothing running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import boto3

from daemon.identity import alive

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432"
DB_PREFIX = "dz_bench_"
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}


# -- processes --------------------------------------------------------------------------------

def stop(process: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not gone within `grace_s`."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait_s)
    with contextlib.suppress(ProcessLookupError):  # leftovers of an exited leader
        os.killpg(process.pid, signal.SIGKILL)


@dataclass(frozen=True)
class Timed:
    """A finished subprocess: exit code (None on timeout), wall seconds, its log file."""

    code: int | None
    seconds: float
    log: Path

    def tail(self, lines: int = 3) -> str:
        """The last lines of its output, for a failure note in the table."""
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip()[:200] for line in text[-lines:])


class PeakPss:
    """The peak proportional set size of a process and all its descendants (the daemon, its
    embedding workers, its MLflow process), sampled every `every_s` from /proc."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s = every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        self._thread = threading.Thread(target=self._watch, args=(pid,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self, pid: int) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, sum(map(pss_bytes, {pid} | descendants(pid))))


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (children of each thread, recursively)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            for child in map(int, (task / "children").read_text().split()):
                found |= {child} | descendants(child)
    return found


def pss_bytes(pid: int) -> int:
    """A process's proportional set size (shared pages counted once over their sharers)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def run_timed(cmd: Sequence[str], env: Mapping[str, str], log: Path, timeout_s: float,
              cwd: Path | None = None, memory: PeakPss | None = None) -> Timed:
    """Run `cmd` to completion, wall-clock timed from spawn to exit, output to `log`.

    Output goes to a file, not a pipe, so a chatty process (the daemon logs a JSON line per
    file) can never block on a full pipe and distort its own timing.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        start = time.perf_counter()
        process = subprocess.Popen(list(cmd), env=dict(env), cwd=cwd, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        if memory is not None:
            memory.start(process.pid)
        try:
            code: int | None = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            elapsed = time.perf_counter() - start
            if memory is not None:
                memory.stop()
            stop(process)
    return Timed(code, elapsed, log)


@contextlib.contextmanager
def running(cmd: Sequence[str], log: Path, cwd: Path | None = None) -> Iterator[Path]:
    """A long-running process (a daemon), output to `log`, stopped (SIGTERM) on exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(list(cmd), env=clean_env({}), cwd=cwd, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            yield log
        finally:
            stop(process, grace_s=35.0)


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The harness's environment, with fake AWS credentials and nothing from ~/.aws or an
    MLflow/dropzone setting of the user's that could change what a contender does."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "MLFLOW_", "DROPZONE_", "S5CMD_"))}
    env.update(FAKE_AWS)
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- moto -------------------------------------------------------------------------------------

class Moto:
    """moto in server mode as a separate process: its CPU is that of a real endpoint."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        """Start `python -m moto.server` and wait until it answers over HTTP."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=clean_env({}), start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto exited with {self.process.returncode}; see {self.log}")
            if self._answers():
                return
            time.sleep(0.2)
        raise RuntimeError(f"moto did not answer at {self.url} within {timeout_s} s")

    def _answers(self) -> bool:
        """Whether the server handles HTTP yet (its port opens before it is ready)."""
        try:
            with urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=2):
                return True
        except (OSError, urllib.error.URLError):
            return False

    def reset(self) -> None:
        """Forget every bucket and object, so each contender meets the same empty server."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=30):
            pass

    def stop(self) -> None:
        """Stop the server and anything it started."""
        if self.process is not None:
            stop(self.process)

    def client(self) -> object:
        """A plain boto3 S3 client on this endpoint (harness side: set-up and checks)."""
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="x", aws_secret_access_key="y")

    def new_bucket(self, name: str) -> str:
        """A fresh bucket named after the contender, unique per call."""
        slug = "".join(c if c.isalnum() else "-" for c in name.lower())[:40]
        bucket = f"bench-{slug}-{uuid.uuid4().hex[:8]}"
        self.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
        return bucket

    def count_objects(self, bucket: str, prefix: str = "") -> int:
        """How many objects the contender left in its bucket (under `prefix`)."""
        pages = self.client().get_paginator("list_objects_v2")  # type: ignore[attr-defined]
        return sum(page.get("KeyCount", 0) for page in pages.paginate(Bucket=bucket,
                                                                       Prefix=prefix))


# -- Postgres ---------------------------------------------------------------------------------

def server_url() -> str:
    """The Postgres server for the benchmark databases: $DZ_BENCH_DATABASE_URL or local."""
    return os.environ.get("DZ_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead (same user, host, port and options)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def _connect(url: str) -> Any:
    """A psycopg2 connection; imported here, so the helpers above (processes, the machine)
    serve benchmarks that need no Postgres, on a dev install without bench/requirements.txt."""
    import psycopg2

    return psycopg2.connect(url)


@contextlib.contextmanager
def admin() -> Iterator[object]:
    """An autocommit connection to the server's maintenance database (CREATE/DROP DATABASE)."""
    url = server_url()
    if not urlsplit(url).path.strip("/"):
        url = with_database(url, "postgres")
    conn = _connect(url)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def create_database(tag: str) -> str:
    """A new empty database for one contender; returns its URL."""
    slug = "".join(c if c.isalnum() else "_" for c in tag.lower())[:30]
    name = f"{DB_PREFIX}{os.getpid()}_{slug}"
    with admin() as conn, conn.cursor() as cur:  # type: ignore[attr-defined]
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    return with_database(server_url(), name)


def drop_database(url: str) -> None:
    """Drop a contender's database, even with the daemon's connections still open."""
    name = urlsplit(url).path.strip("/")
    with admin() as conn, conn.cursor() as cur:  # type: ignore[attr-defined]
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drop_stale_databases() -> list[str]:
    """Drop benchmark databases left by a harness that was killed -9 (its pid is gone)."""
    dropped = []
    with admin() as conn, conn.cursor() as cur:  # type: ignore[attr-defined]
        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{DB_PREFIX}%",))
        for (name,) in cur.fetchall():
            pid = name.removeprefix(DB_PREFIX).split("_", 1)[0]
            if pid.isdigit() and not alive(int(pid)):
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                dropped.append(name)
    return dropped


def _scalar(url: str, query: str) -> Any:
    """The one value `query` returns from the database at `url`."""
    conn = _connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchone()[0]
    finally:
        conn.close()


def count_rows(url: str, table: str) -> int:
    """Rows in `table` of the database at `url` (table names are ours, never user input)."""
    return int(_scalar(url, f"SELECT count(*) FROM {table}"))


def last_document_at(url: str) -> float:
    """When the newest document was written (epoch seconds): its transaction's start, a few
    milliseconds before its commit."""
    return float(_scalar(url, "SELECT extract(epoch FROM max(created_date)) FROM documents"))


def count_finished_runs(mlflow_db: Path) -> int:
    """FINISHED runs in a sqlite MLflow store, read directly (no MLflow import needed)."""
    conn = sqlite3.connect(f"file:{mlflow_db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT count(*) FROM runs WHERE status = 'FINISHED'").fetchone()
        return int(row[0])
    finally:
        conn.close()
