"""The ledger's ceiling (issue 13): files/s that the ledger alone sustains, from claim through
every stage's advance to done, with no file, S3, embedding or MLflow work.

    python -m bench.ledger [--files 20000] [--runs 1/1,4/1,16/1,4/2,16/2,4/4,16/4]
                           [--batch-files 32] [--database server|embedded] [--analyze]
                           [--history H]

Each run (`W/P`: W workers in all, spread over P processes, each a daemon of its own with its
own owner id, heartbeat and tracker) gets a fresh database (`--database server`: on
$DZ_BENCH_DATABASE_URL or 127.0.0.1:5432, dropped afterwards; `embedded`: the daemon's pgserver
in a fresh folder, stopped afterwards). The daemon's own `Sessions` create the schema, and its
`Ledger.discover` records N file versions (no files needed). Then the P processes
(`bench/ledger_daemon.py`) start together and take every file to done; the run ends when the
last one is done. Measured: files/s over the whole run and between 10 % and 90 % done (the
tracker's window makes the last files wait up to `mlflow.window_s`), Postgres CPU per file (the
backends and autovacuum workers of the run's database, from /proc; with `embedded`, the
server's whole process tree), the bench daemons' CPU per file, and per query class the calls,
the wait for a pooled connection, the round trip and the server CPU of its backend.
`--analyze` runs ANALYZE on the ledger after discovery (a fresh table has no statistics, and
the claim's plan depends on them); `--history H` puts H done file versions in it first.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import asyncpg

from bench import cpu, infra
from bench.ledger_daemon import Signals, Spec, Stat
from bench.ledger_daemon import main as daemon_main
from bench.run import cpu_model, dropzone_commit, load_line, markdown
from daemon import config
from daemon.ledger import Entry, Ledger
from daemon.sessions import Sessions

DEFAULT_RUNS = "1/1,4/1,16/1,4/2,16/2,4/4,16/4"
DISCOVER_BATCH = 1000  # file versions per `discover` call
ZONE = "bench"
SAMPLE_S = 0.05  # how often the done count is read
METER_EVERY = 4  # Postgres CPU is sampled every METER_EVERY samples
READY_TIMEOUT_S = 120.0
END_GRACE_S = 90.0  # a daemon's shutdown: its pool waits up to command_timeout_s (60 s)
SLOW_END_S = 5.0  # a shutdown that takes longer is said


@dataclass(frozen=True)
class RunSpec:
    """W workers in all over P processes."""

    workers: int
    processes: int

    @property
    def name(self) -> str:
        return f"{self.workers}/{self.processes}"

    def shares(self) -> list[int]:
        """Workers per process (as even as can be)."""
        base, extra = divmod(self.workers, self.processes)
        return [base + (i < extra) for i in range(self.processes)]


@dataclass
class Result:
    """What one run measured."""

    spec: RunSpec
    files: int
    seconds: float = 0.0
    steady: float = 0.0  # files/s between 10 % and 90 % done
    postgres_s: float = 0.0
    autovacuum_s: float | None = None  # None: counted in postgres_s (embedded)
    client_s: float = 0.0
    stats: dict[str, Stat] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    load: tuple[float, float] = (0.0, 0.0)
    discover_s: float = 0.0
    floors: dict[str, float] = field(default_factory=dict)
    error: str | None = None


# -- the database and its ledger --------------------------------------------------------------

def settings_document(work: Path, url: str, workers: int, batch_files: int) -> dict[str, Any]:
    """The config of a bench daemon: one zone, a local object folder nobody writes to, the
    daemon's defaults for everything else but `workers` and `batch_files`."""
    (work / "zone").mkdir(parents=True, exist_ok=True)
    return {"state_dir": str(work / "var"), "zones": [{"name": ZONE, "path": str(work / "zone")}],
            "database": {"url": url}, "storage": {"url": str(work / "objects")},
            "mlflow": {"tracking_uri": f"sqlite:///{work}/mlflow.db"},
            "pipeline": {"workers": workers, "batch_files": batch_files}}


def entries(files: int, folder: str = "") -> Iterator[list[Entry]]:
    """N distinct file versions, DISCOVER_BATCH at a time, named like a corpus's."""
    for start in range(0, files, DISCOVER_BATCH):
        yield [Entry(f"{folder}{i // 1000:03d}/file-{i:06d}.txt", 1000 + i % 64_000,
                     1_700_000_000_000_000_000 + i)
               for i in range(start, min(files, start + DISCOVER_BATCH))]


async def discover(ledger: Ledger, files: int, folder: str = "") -> float:
    """`Ledger.discover` of N file versions; returns the seconds it took."""
    began = time.perf_counter()
    for batch in entries(files, folder):
        await ledger.discover(ZONE, batch)
    return time.perf_counter() - began


HISTORY = """
UPDATE dz_files
   SET stage = 'done', outcome = 'stored', reported = true, chunks = 20,
       sha256 = encode(sha256(convert_to(rel_path, 'UTF8')), 'hex'),
       object_key = 'dropzones/document/' || md5(rel_path) || '/' || rel_path,
       etag = md5(rel_path), batch_id = md5((id / 500)::text)::uuid,
       mlflow_run_id = md5((id / 500)::text),
       stage_ms = '{"hash": 1.2, "upload": 1.2, "extract": 1.2, "embed": 1.2, "store": 1.2,
                    "finish": 1.2}',
       updated_at = now() - interval '1 day'
"""  # what a done row keeps: its content, object, MLflow batch (of 500) and timings


async def add_history(sessions: Sessions, ledger: Ledger, files: int) -> None:
    """Files of the past: discovered, set done with what done rows keep in one statement (a
    shortcut, not the ledger's path), then vacuumed and analysed, as autovacuum would have."""
    await discover(ledger, files, "history/")
    await sessions.execute(HISTORY)
    await sessions.execute("VACUUM ANALYZE dz_files")


async def prepare(document: dict[str, Any], base: Path, files: int, history: int,
                  analyze: bool = False) -> float:
    """Schema through the daemon's `Sessions` (its `Database`), the history if any, then
    `Ledger.discover` of the files (and an ANALYZE if asked); returns the seconds their
    discovery took."""
    settings = config.parse(document, base, env={})
    async with Sessions(settings) as sessions:
        ledger = Ledger(sessions, [ZONE], "bench-discover", settings.pipeline.lease_s)
        if history:
            await add_history(sessions, ledger, history)
        took = await discover(ledger, files)
        if analyze:
            await sessions.execute("ANALYZE dz_files")
        return took


PROBES = {"select": "SELECT 1", "commit": "UPDATE bench_probe SET n = n + 1 WHERE id = 1"}


async def floors(url: str, calls: int = 200) -> dict[str, float]:
    """The round trip of `SELECT 1` and of a one-row autocommit UPDATE (its WAL flush
    included), in ms: what any statement costs at least, on this machine under this load."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE bench_probe (id int PRIMARY KEY, n int); "
                           "INSERT INTO bench_probe VALUES (1, 0)")
        found = {}
        for name, query in PROBES.items():
            began = time.perf_counter()
            for _ in range(calls):
                await conn.execute(query)
            found[name] = (time.perf_counter() - began) * 1000 / calls
        await conn.execute("DROP TABLE bench_probe")
        return found
    finally:
        await conn.close()


FACTS = """
SELECT (SELECT count(*) FROM dz_files
         WHERE stage = 'done' AND rel_path NOT LIKE 'history/%') AS done,
       n_tup_upd, n_tup_hot_upd, n_dead_tup, autovacuum_count, autoanalyze_count,
       pg_table_size('dz_files') AS table_bytes, pg_indexes_size('dz_files') AS index_bytes,
       current_setting('autovacuum') AS autovacuum, current_setting('server_version') AS version
  FROM pg_stat_user_tables WHERE relname = 'dz_files'
"""


async def facts(url: str) -> dict[str, Any]:
    """The ledger table after a run: rows done, updates (HOT or not), dead rows, sizes."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(FACTS)
    finally:
        await conn.close()
    return dict(row) if row is not None else {}


# -- Postgres CPU -----------------------------------------------------------------------------

class DatabaseBackends:
    """On a shared server: CPU of the processes whose title names the run's database (its
    backends and autovacuum workers); the server's own background processes serve everyone
    and are left out."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.roots: list[int] = []
        self.first: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}

    def sample(self, begin: bool = False) -> None:
        if begin:
            self.roots = cpu.postmasters()
        for root in self.roots:
            for pid in infra.descendants(root):
                self._record(pid, begin)

    def _record(self, pid: int, begin: bool) -> None:
        try:
            title = Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
        except OSError:
            return
        words, times = title.replace("\0", " ").split(), cpu.cpu_times(pid)
        if self.database in words and times is not None:
            if begin:
                self.first[pid] = times[0]
            self.last[pid] = ("autovacuum" if "autovacuum" in words else "backends", times[0])

    def seconds(self) -> dict[str, float]:
        found = {"backends": 0.0, "autovacuum": 0.0}
        for pid, (kind, used) in self.last.items():
            found[kind] += used - self.first.get(pid, 0.0)
        return found


class WholeServer:
    """The embedded server: its whole process tree (`bench.cpu.Tree`)."""

    def __init__(self, db: infra.EmbeddedDb) -> None:
        self.tree = cpu.Tree("postgres", db.postmaster)

    def sample(self, begin: bool = False) -> None:
        self.tree.sample(begin)

    def seconds(self) -> dict[str, float]:
        return {"backends": self.tree.seconds()}


def meter_for(db: infra.Database) -> DatabaseBackends | WholeServer:
    if isinstance(db, infra.EmbeddedDb):
        return WholeServer(db)
    assert isinstance(db, infra.ServerDb)
    return DatabaseBackends(db.name)


# -- one run ----------------------------------------------------------------------------------

@dataclass
class Daemons:
    """The bench daemons of a run and their handles."""

    processes: list[Any]
    signals: Signals
    results: Any  # a multiprocessing Queue

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def failed(self) -> bool:
        return any(p.exitcode not in (None, 0) for p in self.processes)


def spawn(spec: RunSpec, document: dict[str, Any], base: Path) -> Daemons:
    """Start the P daemons; returns once every one has its sessions open."""
    ctx = multiprocessing.get_context("spawn")
    signals = Signals(ctx.Value("q", 0), ctx.Event(), ctx.Event(), ctx.Value("q", 0))
    results = ctx.Queue()
    processes = []
    for index, workers in enumerate(spec.shares()):
        one = {**document, "pipeline": {**document["pipeline"], "workers": workers}}
        process = ctx.Process(target=daemon_main, daemon=True, name=f"bench-ledger-{index}",
                              args=(Spec(index, one, str(base), workers), signals, results))
        process.start()
        processes.append(process)
    daemons = Daemons(processes, signals, results)
    _await_ready(daemons, spec.processes)
    return daemons


def _await_ready(daemons: Daemons, count: int) -> None:
    """Each child counts itself ready once; wait until all of them did (or one failed)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while daemons.signals.ready.value < count:
        if daemons.failed() or time.monotonic() > deadline:
            raise RuntimeError(f"{daemons.signals.ready.value} of {count} bench daemons "
                               f"started within {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.05)


def watch(daemons: Daemons, files: int, meter: Any, timeout_s: float) -> list[tuple[float, int]]:
    """Start the daemons and sample the done count until all files are done; returns
    (seconds since the start, files done) samples."""
    samples: list[tuple[float, int]] = []
    began = time.perf_counter()
    daemons.signals.start.set()
    done = 0
    while done < files:
        time.sleep(SAMPLE_S)
        done = daemons.signals.done.value
        samples.append((time.perf_counter() - began, done))
        if len(samples) % METER_EVERY == 0:
            meter.sample()
        if daemons.failed() or samples[-1][0] > timeout_s:
            raise RuntimeError(f"stopped at {done} of {files} files done")
    return samples


def steady_rate(samples: list[tuple[float, int]], files: int) -> float:
    """Files/s between the samples where 10 % and 90 % of the files were done."""
    low = next(s for s in samples if s[1] >= 0.1 * files)
    high = next(s for s in samples if s[1] >= 0.9 * files)
    return (high[1] - low[1]) / (high[0] - low[0]) if high[0] > low[0] else 0.0


def collect(daemons: Daemons) -> dict[str, Stat]:
    """Stop the daemons and sum their statements' timings."""
    daemons.signals.stop.set()
    merged: dict[str, Stat] = {}
    for _ in daemons.processes:
        _, stats, error = daemons.results.get(timeout=END_GRACE_S)
        if error:
            raise RuntimeError(f"a bench daemon failed: {error}")
        for name, values in stats.items():
            total = merged.setdefault(name, Stat())
            for key, value in values.items():
                setattr(total, key, getattr(total, key) + value)
    return merged


def end(daemons: Daemons) -> None:
    """Every daemon gone: joined, or killed (and said so) after a grace."""
    daemons.signals.stop.set()
    began = time.perf_counter()
    for process in daemons.processes:
        process.join(END_GRACE_S)
        if time.perf_counter() - began > SLOW_END_S:
            print(f"{process.name} exited {time.perf_counter() - began:.0f} s after the stop",
                  file=sys.stderr, flush=True)
        if process.is_alive():
            print(f"{process.name} still running {END_GRACE_S:.0f} s after the stop: killed",
                  file=sys.stderr, flush=True)
            process.kill()
            process.join(5)


def client_seconds(pids: list[int]) -> float:
    """The daemons' CPU so far (utime + stime of each, all their threads)."""
    return sum(times[0] for times in map(cpu.cpu_times, pids) if times is not None)


def measure(result: Result, daemons: Daemons, meter: Any, timeout_s: float) -> None:
    """The timed part of a run: from the start to the last file done."""
    meter.sample(begin=True)
    client = client_seconds(daemons.pids())
    samples = watch(daemons, result.files, meter, timeout_s)
    meter.sample()
    result.client_s = client_seconds(daemons.pids()) - client
    result.seconds, result.steady = samples[-1][0], steady_rate(samples, result.files)
    used = meter.seconds()
    result.postgres_s = sum(used.values())
    result.autovacuum_s = used.get("autovacuum")
    result.stats = collect(daemons)


def run_one(spec: RunSpec, args: argparse.Namespace, work: Path) -> Result:
    """One run in a fresh database; the database goes afterwards, whatever happened."""
    result = Result(spec, args.files)
    folder = work / f"{len(list(work.iterdir()))}-{spec.workers}w{spec.processes}p"  # fresh
    db = infra.open_database(args.database, f"ledger_{spec.workers}w{spec.processes}p",
                             folder / "var")
    try:
        url = db.url()
        document = settings_document(folder, url, spec.workers, args.batch_files)
        result.discover_s = asyncio.run(prepare(document, folder, args.files, args.history,
                                                args.analyze))
        result.floors = asyncio.run(floors(url))
        daemons = spawn(spec, document, folder)
        try:
            result.load = (os.getloadavg()[0], 0.0)
            measure(result, daemons, meter_for(db), args.timeout)
            result.load = (result.load[0], os.getloadavg()[0])
        finally:
            end(daemons)
        result.facts = asyncio.run(facts(url))
    except Exception as exc:  # one failed run must not lose the others
        result.error = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        db.close()
    return result


# -- the tables -------------------------------------------------------------------------------

def _ms(seconds: float | None, files: int) -> str:
    return "—" if seconds is None else f"{seconds * 1000 / files:.3f}"


def run_row(r: Result, history: int) -> list[str]:
    """One run: throughput, CPU per file, updates, load."""
    if r.error:
        return [r.spec.name, *["—"] * 9, r.error]
    f = r.facts
    updates = f.get("n_tup_upd", 0) - history  # the history's own UPDATE left out
    return [r.spec.name, f"{r.steady:,.0f}", f"{r.files / r.seconds:,.0f}", f"{r.seconds:.1f}",
            _ms(r.postgres_s, r.files), _ms(r.autovacuum_s, r.files), _ms(r.client_s, r.files),
            f"{updates / r.files:.1f} ({f.get('n_tup_hot_upd', 0) / max(1, updates):.0%} HOT)",
            f"{f.get('autovacuum_count', 0)}/{f.get('autoanalyze_count', 0)}",
            f"{r.load[0]:.2f} → {r.load[1]:.2f}", notes(r)]


def notes(r: Result) -> str:
    """Files done, the floors, discovery, the table's size after the run."""
    mib = (r.facts.get("table_bytes", 0) + r.facts.get("index_bytes", 0)) / 2**20
    return (f"{r.facts.get('done')} done; Postgres {r.facts.get('version')}, autovacuum "
            f"{r.facts.get('autovacuum')}; SELECT 1 {r.floors.get('select', 0):.2f} ms, "
            f"1-row commit {r.floors.get('commit', 0):.2f} ms; discover "
            f"{r.files / r.discover_s:,.0f} files/s; dz_files {mib:.1f} MiB with indexes")


RUN_HEAD = ["W/P", "files/s (10-90 %)", "files/s (all)", "s", "Postgres CPU ms/file",
            "of it autovacuum", "bench daemons CPU ms/file", "row updates/file",
            "autovacuum/analyze", "load 1-min", "notes"]


def query_rows(r: Result) -> list[list[str]]:
    """Per query class, by server CPU: calls per 1,000 files, rows per call, mean wait for a
    connection, mean round trip and server CPU, and each one's share of the totals."""
    server = sum(s.server_s for s in r.stats.values()) or 1.0
    wall = sum(s.wall_s for s in r.stats.values()) or 1.0
    rows = [["query", "calls/1k files", "rows/call", "pool wait ms", "round trip ms",
             "server CPU ms", "server CPU %", "round trip %"]]
    for name, s in sorted(r.stats.items(), key=lambda kv: -kv[1].server_s):
        calls = max(1, s.calls)
        rows.append([name, f"{s.calls * 1000 / r.files:.1f}", f"{s.rows / calls:.1f}",
                     f"{s.wait_s * 1000 / calls:.3f}", f"{s.wall_s * 1000 / calls:.3f}",
                     f"{s.server_s * 1000 / calls:.3f}", f"{s.server_s / server:.1%}",
                     f"{s.wall_s / wall:.1%}"])
    rows.append(["all timed", "", "", "", "", f"{server * 1000 / r.files:.3f} /file",
                 f"{server / max(r.postgres_s, 1e-9):.0%} of measured", ""])
    return rows


def header(args: argparse.Namespace) -> list[str]:
    return [f"date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"nproc: {os.cpu_count()}; cpu: {cpu_model()}", load_line(),
            f"dropzone: {dropzone_commit()}",
            "database: " + (f"server {infra.server_url()}" if args.database == "server"
                            else "embedded (pgserver)"),
            f"command: {command_line(args)}"]


def command_line(args: argparse.Namespace) -> str:
    return (f"python -m bench.ledger --files {args.files} --runs {args.runs} "
            f"--batch-files {args.batch_files} --history {args.history} "
            f"--database {args.database}{' --analyze' if args.analyze else ''}")


def report(args: argparse.Namespace, results: list[Result]) -> None:
    print(markdown([RUN_HEAD, *(run_row(r, args.history) for r in results)]) + "\n")
    for r in results:
        if not r.error:
            print(f"queries, {r.spec.name} (W/P):\n{markdown(query_rows(r))}\n")
    print(load_line("end"))


# -- main -------------------------------------------------------------------------------------

def parse_runs(text: str) -> list[RunSpec]:
    runs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        workers, _, processes = part.partition("/")
        spec = RunSpec(int(workers), int(processes or 1))
        if spec.processes < 1 or spec.workers < spec.processes:
            raise ValueError(f"{part}: need at least one worker per process")
        runs.append(spec)
    return runs


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20_000, help="file versions (20,000)")
    parser.add_argument("--runs", default=DEFAULT_RUNS,
                        help=f"W/P: W workers over P processes, comma-separated ({DEFAULT_RUNS})")
    parser.add_argument("--batch-files", type=int, default=32,
                        help="pipeline.batch_files (the daemon's default, 32)")
    parser.add_argument("--database", choices=("server", "embedded"), default="server",
                        help="a fresh database on the server (default) or the embedded pgserver")
    parser.add_argument("--history", type=int, default=0,
                        help="file versions of the past, done, in the ledger before the run (0)")
    parser.add_argument("--analyze", action="store_true",
                        help="ANALYZE dz_files after discovery, as autovacuum does within a "
                        "minute of a large discovery (without: a fresh table has no statistics)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    args = parser.parse_args(argv)
    try:
        args.specs = parse_runs(args.runs)
    except ValueError as exc:
        parser.error(str(exc))
    if args.files < 100:
        parser.error("--files must be at least 100")
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM as Ctrl-C: every `finally` runs (databases dropped, daemons stopped)."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.database == "server":
        for name in infra.drop_stale_databases():
            print(f"dropped {name}, left by a bench killed earlier", file=sys.stderr)
    print("\n".join(header(args)) + "\n", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="dz-bench-ledger-") as work:
        for spec in args.specs:
            print(f"run {spec.name} ...", end=" ", flush=True)
            results.append(run_one(spec, args, Path(work)))
            print(results[-1].error or f"{results[-1].steady:,.0f} files/s", flush=True)
    report(args, results)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
