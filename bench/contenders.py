"""The contenders: each runs as its own subprocess against the same corpus and S3 endpoint,
is timed from spawn to exit, and is then checked against what it should have left behind.
The upload and backfill runs are also watched for CPU per process group (bench/cpu.py).

A contender that keeps state (a table, an MLflow store, the daemon's schema) first does an
untimed warm-up on nothing with the same settings, so the timed run measures the steady state
and not the one-off creation of an MLflow store or a database schema. A failure (bad exit code,
a count that is not N, a timeout, an exception) becomes a row with the reason, never a crash.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench import cpu, infra, peers
from bench.corpus import corpus_files

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Ctx:
    """Everything one contender gets: its own bucket, database and folder; shared corpus and
    S3 endpoint."""

    name: str
    files: int
    corpus: Path
    s3: infra.Endpoint
    bucket: str
    prefix: str
    db: infra.Database
    work: Path
    timeout_s: float

    def timed(self, cmd: list[str], label: str, cwd: Path | None = None,
              watches: tuple[infra.Sampler, ...] = ()) -> infra.Timed:
        """Run one step of this contender, its output in `<work>/<label>.log`."""
        return infra.run_timed(cmd, infra.clean_env({}), self.work / f"{label}.log",
                               self.timeout_s, cwd, watches)

    def cpu_watch(self) -> cpu.CpuWatch:
        """CPU by group over one run: its processes, its Postgres (if it uses one), the S3
        server."""
        return cpu.CpuWatch([cpu.Tree("s3", self.s3.pid), postgres_meter(self.db)])


def postgres_meter(db: infra.Database) -> cpu.Meter:
    """The embedded server's whole tree, or a shared server's backends of our database."""
    if isinstance(db, infra.EmbeddedDb):
        return cpu.Tree("postgres", db.postmaster)
    assert isinstance(db, infra.ServerDb)
    return cpu.Backends("postgres", db.name)


@dataclass(frozen=True)
class Outcome:
    """One row of the table: seconds is None when there is nothing worth timing."""

    files: int
    seconds: float | None
    error: str = ""
    note: str = ""
    latency: bool = False  # `seconds` is a latency, not a run's length: no rate, no ratios
    cpu: dict[str, float] | None = None  # CPU seconds by group (bench/cpu.py), when watched

    @property
    def ok(self) -> bool:
        """Succeeded: ran, exited 0 and left exactly what it should."""
        return not self.error


class Failed(Exception):
    """A contender did not do what it should; the message goes into the table."""


def require(run: infra.Timed, step: str) -> None:
    """Exit code 0 or a Failed that says which step, how it ended and its last words."""
    if run.code is None:
        raise Failed(f"{step}: timed out after {run.seconds:.0f} s; log {run.log}")
    if run.code != 0:
        raise Failed(f"{step}: exit {run.code}: {run.tail()}")


def expect(what: str, got: int, want: int) -> None:
    """A count that must be exactly N."""
    if got != want:
        raise Failed(f"{what}: {got}, expected {want}")


def loop_seconds(run: infra.Timed) -> str:
    """The in-process timing a Python contender prints as its last line, for the notes."""
    try:
        lines = run.log.read_text().strip().splitlines()
        return f"in-process {json.loads(lines[-1])['seconds']:.1f} s"
    except (OSError, ValueError, KeyError, IndexError):
        return ""


# -- reference and MLflow alone -------------------------------------------------------------

def reference(ctx: Ctx) -> Outcome:
    """The original guide's sequential recipe (bench/reference.py)."""
    mlflow_db = ctx.work / "mlflow.db"
    cmd = [sys.executable, "-m", "bench.reference", "--corpus", str(ctx.corpus),
           "--endpoint", ctx.s3.url, "--bucket", ctx.bucket, "--database-url", ctx.db.url(),
           "--tracking-uri", f"sqlite:///{mlflow_db}"]
    require(ctx.timed([*cmd, "--warmup"], "warmup", REPO), "warm-up")
    watch = ctx.cpu_watch()
    run = ctx.timed(cmd, "run", REPO, (watch,))
    require(run, "run")
    expect("objects", ctx.s3.count_objects(ctx.bucket), ctx.files)
    expect("rows", infra.count_rows(ctx.db.url(), "document_embeddings_reference"), ctx.files)
    expect("MLflow runs", infra.count_finished_runs(mlflow_db), ctx.files)
    return Outcome(ctx.files, run.seconds, note=loop_seconds(run), cpu=watch.seconds())


def mlflow_alone(ctx: Ctx) -> Outcome:
    """N MLflow runs made as the daemon's per-file mode makes them, and nothing else."""
    mlflow_db = ctx.work / "mlflow.db"
    cmd = [sys.executable, "-m", "bench.mlflow_alone", "--runs", str(ctx.files),
           "--tracking-uri", f"sqlite:///{mlflow_db}"]
    require(ctx.timed([*cmd, "--warmup"], "warmup", REPO), "warm-up")
    watch = ctx.cpu_watch()
    run = ctx.timed(cmd, "run", REPO, (watch,))
    require(run, "run")
    expect("MLflow runs", infra.count_finished_runs(mlflow_db), ctx.files)
    return Outcome(ctx.files, run.seconds, note=loop_seconds(run), cpu=watch.seconds())


# -- upload-only peers ------------------------------------------------------------------------

def _peer(ctx: Ctx, cmd: list[str]) -> Outcome:
    """Run an upload tool once and count what arrived under the prefix."""
    watch = ctx.cpu_watch()
    run = ctx.timed(cmd, "run", watches=(watch,))
    require(run, "run")
    expect("objects", ctx.s3.count_objects(ctx.bucket, f"{ctx.prefix}/"), ctx.files)
    return Outcome(ctx.files, run.seconds, note="upload only", cpu=watch.seconds())


def s5cmd(ctx: Ctx) -> Outcome:
    """The native s5cmd binary, one `cp` of the corpus folder."""
    return _peer(ctx, peers.s5cmd_command(ctx.corpus, ctx.s3.url, ctx.bucket, ctx.prefix))


def aws_cli(ctx: Ctx) -> Outcome:
    """`aws s3 cp --recursive` of the corpus folder."""
    return _peer(ctx, peers.aws_command(ctx.corpus, ctx.s3.url, ctx.bucket, ctx.prefix))


# -- dropzone ---------------------------------------------------------------------------------

def daemon_config(ctx: Ctx, zone: Path, run_per_file: bool, settle_ms: int = 1000,
                  hnsw_index: bool = True) -> Path:
    """The YAML the daemon runs on: everything explicit, nothing from the environment."""
    settings = {
        "state_dir": str(ctx.work / "var"),
        "zones": [{"name": "bench", "path": str(zone), "doc_type": "document",
                   "settle_ms": settle_ms, "after": "move"}],
        "storage": {"url": f"s3://{ctx.bucket}/{ctx.prefix}", "endpoint_url": ctx.s3.url,
                    "region": "us-east-1", "sse": "AES256"},
        "database": {**ctx.db.section(), "hnsw_index": hnsw_index},
        "mlflow": {"tracking_uri": f"sqlite:///{ctx.work / 'mlflow.db'}",
                   "experiment": "dropzone", "run_per_file": run_per_file},
    }
    path = ctx.work / "drop_zones.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def fill_zone(corpus: Path, zone: Path) -> None:
    """A copy of the corpus the daemon may move away: hard links (instant, same bytes and
    mtimes), or real copies when the work folder is on another filesystem."""
    for source in corpus_files(corpus):
        target = zone / source.relative_to(corpus)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)


# the interpreter dropzone runs under: this one (the dev install), or `--daemon-python`, e.g. a
# venv made by the README's first line (what users get: mlflow-skinny, without pandas or pyarrow)
DAEMON_PYTHON = [sys.executable]


def daemon_command(config: Path, *args: str) -> list[str]:
    return [DAEMON_PYTHON[0], "-m", "daemon", "--config", str(config), *args,
            "--log-format", "json"]


def warmed_up(ctx: Ctx, run_per_file: bool = False,
              hnsw_index: bool = True) -> tuple[Path, list[str]]:
    """An empty zone and the `--once` command on it, after one untimed `--once` there (it
    creates the schema and the MLflow store, so timed runs measure the steady state)."""
    zone = ctx.work / "zone"
    zone.mkdir(parents=True)
    config = daemon_config(ctx, zone, run_per_file, hnsw_index=hnsw_index)
    cmd = daemon_command(config, "--once")
    require(ctx.timed(cmd, "warmup", REPO), "warm-up --once on an empty zone")
    return zone, cmd


def settled(path: Path) -> None:
    """Backdate a file's mtime by an hour: the daemon takes it without waiting settle_ms."""
    old = time.time() - 3600
    os.utime(path, (old, old))


def _dropzone(ctx: Ctx, run_per_file: bool) -> Outcome:
    """Warm-up `--once` on an empty zone, fill it, time `--once`."""
    zone, cmd = warmed_up(ctx, run_per_file)
    fill_zone(ctx.corpus, zone)
    memory, watch = infra.PeakPss(), ctx.cpu_watch()
    run = ctx.timed(cmd, "run", REPO, (memory, watch))
    require(run, "--once")
    note = (f"{backfilled(ctx, run_per_file)}, peak PSS {memory.peak / 2**20:.0f} MiB "
            f"({memory.breakdown()})")
    return Outcome(ctx.files, run.seconds, note=note, cpu=watch.seconds())


def backfilled(ctx: Ctx, run_per_file: bool) -> str:
    """Check that a backfill left every document, object and MLflow run; its counts."""
    expect("documents", infra.count_rows(ctx.db.url(), "documents"), ctx.files)
    expect("objects", ctx.s3.count_objects(ctx.bucket, f"{ctx.prefix}/"), ctx.files)
    runs = infra.count_finished_runs(ctx.work / "mlflow.db")
    if run_per_file:
        expect("MLflow runs", runs, ctx.files)
    elif runs < 1:
        raise Failed("no finished MLflow run")
    chunks = infra.count_rows(ctx.db.url(), "document_embeddings")
    return f"{chunks} chunks, {runs} MLflow run(s){indexed(ctx)}"


def indexed(ctx: Ctx) -> str:
    """With pgvector the run is over only once the search index is there (built at the end
    of a large backfill, inside the timed run)."""
    if ctx.db.mode != "embedded":
        return ""
    if not infra.index_exists(ctx.db.url(), "document_embeddings_hnsw"):
        raise Failed("no HNSW index after the run")
    return ", HNSW index built"


def dropzone(ctx: Ctx) -> Outcome:
    """The daemon as shipped: one MLflow run per `--once` batch."""
    return _dropzone(ctx, run_per_file=False)


def dropzone_run_per_file(ctx: Ctx) -> Outcome:
    """The daemon with `mlflow.run_per_file: true`, the original guide's MLflow shape."""
    return _dropzone(ctx, run_per_file=True)


STARTUP_TRIALS = 5


def dropzone_startup(ctx: Ctx) -> Outcome:
    """Start-up: from spawning `--once` to its first file committed in Postgres, one small
    file, stores already made (the median of a few trials)."""
    zone, cmd = warmed_up(ctx)
    times = sorted(_first_commit(ctx, cmd, zone, trial) for trial in range(STARTUP_TRIALS))
    return Outcome(1, statistics.median(times), latency=True,
                   note=f"spawn to first document committed, median of {len(times)} "
                        f"(min {times[0]:.2f} s, max {times[-1]:.2f} s)")


def _first_commit(ctx: Ctx, cmd: list[str], zone: Path, trial: int) -> float:
    """One trial: a new small file (settled: its mtime is old), `--once`, the commit time."""
    text = next(iter(corpus_files(ctx.corpus))).read_text()
    target = zone / f"startup-{trial}.txt"
    target.write_text(f"{text}\ntrial {trial} at {time.time()}\n")
    settled(target)
    spawned = time.time()
    require(ctx.timed(cmd, f"run-{trial}", REPO), f"--once, trial {trial}")
    return infra.last_document_at(ctx.db.url()) - spawned


def _processes(ctx: Ctx, count: int) -> Outcome:
    """`count` daemons (`--once`) started together on one zone and one database: they share
    the backlog through the ledger. Timed from the first spawn to the last exit."""
    zone, cmd = warmed_up(ctx)
    fill_zone(ctx.corpus, zone)
    env = infra.clean_env({})
    start = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        runs = list(pool.map(lambda i: infra.run_timed(cmd, env, ctx.work / f"run-{i}.log",
                                                       ctx.timeout_s, REPO), range(count)))
    seconds = time.perf_counter() - start
    for index, run in enumerate(runs):
        require(run, f"--once #{index}")
    expect("documents", infra.count_rows(ctx.db.url(), "documents"), ctx.files)
    return Outcome(ctx.files, seconds, note=f"{count} processes sharing one ledger{indexed(ctx)}")


def dropzone_x2(ctx: Ctx) -> Outcome:
    """Two daemons on one backlog."""
    return _processes(ctx, 2)


def dropzone_x4(ctx: Ctx) -> Outcome:
    """Four daemons on one backlog."""
    return _processes(ctx, 4)


LARGE_MB = int(os.environ.get("DZ_BENCH_LARGE_MB", "1024"))


def dropzone_large_file(ctx: Ctx) -> Outcome:
    """Memory: one large text file (DZ_BENCH_LARGE_MB, default 1 GiB, made of the corpus's
    texts) through `--once`; peak PSS of the daemon and its workers, sampled every 0.2 s."""
    zone, cmd = warmed_up(ctx)
    size = _large_file(ctx.corpus, zone / "large.txt", LARGE_MB * 2**20)
    memory, watch = infra.PeakPss(), ctx.cpu_watch()
    run = ctx.timed(cmd, "run", REPO, (memory, watch))
    require(run, "--once")
    expect("documents", infra.count_rows(ctx.db.url(), "documents"), 1)
    chunks = infra.count_rows(ctx.db.url(), "document_embeddings")
    return Outcome(1, run.seconds, note=f"{size / 2**20:.0f} MiB file, {chunks} chunks, peak "
                                        f"PSS {memory.peak / 2**20:.0f} MiB "
                                        f"({memory.breakdown()})", cpu=watch.seconds())


def _large_file(corpus: Path, target: Path, size: int) -> int:
    """Concatenate the corpus's texts, again and again, into `target` until `size` bytes."""
    texts = [path.read_bytes() for path in corpus_files(corpus)]
    written = 0
    with target.open("wb") as out:
        while written < size:
            for text in texts:
                written += out.write(text + b"\n\n")
                if written >= size:
                    break
    settled(target)
    return written


LATENCY_DROPS, LATENCY_SETTLE_MS, IDLE_S = 20, 200, 12.0


def dropzone_latency(ctx: Ctx) -> Outcome:
    """Latency: the daemon running idle, small files dropped one at a time (written under a
    temporary name, then renamed in); from the rename to the document's commit, minus the
    zone's settle_ms. The median of 20."""
    zone = ctx.work / "zone"
    zone.mkdir(parents=True)
    config = daemon_config(ctx, zone, run_per_file=False, settle_ms=LATENCY_SETTLE_MS)
    cmd = daemon_command(config)
    with infra.running(cmd, ctx.work / "daemon.log", REPO) as log:
        _wait_for_line(log, '"daemon_ready"', 60)
        time.sleep(IDLE_S)  # past MLflow's start: the daemon is idle
        delays = sorted(_drop_one(ctx, zone, i) - LATENCY_SETTLE_MS / 1000
                        for i in range(LATENCY_DROPS))
    return Outcome(1, statistics.median(delays), latency=True,
                   note=f"drop to commit beyond settle_ms ({LATENCY_SETTLE_MS} ms), median of "
                        f"{len(delays)} (min {delays[0]:.3f} s, max {delays[-1]:.3f} s)")


def _wait_for_line(log: Path, needle: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while needle not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise Failed(f"no {needle} in {log} within {timeout_s:.0f} s")
        time.sleep(0.1)


def _drop_one(ctx: Ctx, zone: Path, index: int) -> float:
    """Drop one new file; seconds from its rename into the zone to its document's commit."""
    before = infra.count_rows(ctx.db.url(), "documents")
    draft = zone / f".drop-{index}.part"
    draft.write_text(f"{next(iter(corpus_files(ctx.corpus))).read_text()}\n{index} {time.time()}")
    dropped = time.time()
    draft.rename(zone / f"drop-{index}.txt")
    while infra.count_rows(ctx.db.url(), "documents") == before:
        if time.time() - dropped > 30:
            raise Failed(f"file {index} not committed within 30 s")
        time.sleep(0.005)
    return infra.last_document_at(ctx.db.url()) - dropped


CONTENDERS: dict[str, Callable[[Ctx], Outcome]] = {
    "reference": reference,
    "s5cmd": s5cmd,
    "aws-cli": aws_cli,
    "dropzone": dropzone,
    "dropzone-run-per-file": dropzone_run_per_file,
    "mlflow-alone-per-file": mlflow_alone,
    "dropzone-startup": dropzone_startup,
    "dropzone-latency": dropzone_latency,
    "dropzone-x2": dropzone_x2,
    "dropzone-x4": dropzone_x4,
    "dropzone-large-file": dropzone_large_file,
}
