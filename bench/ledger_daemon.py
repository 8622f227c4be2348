"""One ledger-only "daemon" for `python -m bench.ledger`: the daemon's own ledger traffic with
no file, S3, embedding or MLflow work, in a process of its own.

What is real: the settings, `Sessions` (its asyncpg pool, retry policy and breakers, its health
rows), `Ledger` and every ledger method the daemon calls, the supervisor's `Workers` feeder (one
claim of `pipeline.batch_files` at a time, a queue of at most `pipeline.workers` batches, the
wake-up and the `poll_s` poll), the owner id and the upkeep loops. What is replaced: each stage's
work by nothing (`carry` gives each file a made-up sha256, object key, etag and timings and
writes them with the same `advance_many` calls, in the same order, as the stages), and the
tracker's MLflow run by nothing (the same `track_window`, `claim_batch` and `tracked` calls
as `daemon.supervisor.Tracker`). No documents are inserted: the store stage's transaction
holds only its ledger write.

Every Postgres call is timed by query (`Stats`): the wait for a pooled connection, the round
trip, and the server's CPU for it, read from its backend's /proc/<pid>/schedstat just before
and just after (0 when the server is on another host).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar, cast

import asyncpg

from daemon import config
from daemon.database import load_queries
from daemon.identity import this_process
from daemon.ledger import FileRow, Ledger
from daemon.objectstore import object_key
from daemon.sessions import Connection, Sessions
from daemon.stages import Env
from daemon.supervisor import PULSE_S, Workers, sleep_unless

T = TypeVar("T")
QUERY_NAMES = {text: name for name, text in load_queries().items()}
STORE_TX = "advance→track (tx)"  # the store stage's transaction: BEGIN, advance, COMMIT
RUN_ID = "bench-ledger-run"  # what the tracker records instead of an MLflow run id


@dataclass
class Stat:
    """One query class: calls, rows returned, and seconds spent (summed over calls)."""

    calls: int = 0
    rows: int = 0
    wait_s: float = 0.0  # for a connection from the pool
    wall_s: float = 0.0  # the statement (or transaction), connection in hand
    server_s: float = 0.0  # its backend's CPU


class Stats(dict[str, Stat]):
    """Stat by query class: the query's name in queries.sql, `advance` by target stage."""

    def add(self, name: str, times: tuple[float, float, float], server_s: float,
            rows: int) -> None:
        began, got, ended = times
        stat = self.setdefault(name, Stat())
        stat.calls, stat.rows = stat.calls + 1, stat.rows + rows
        stat.wait_s += got - began
        stat.wall_s += ended - got
        stat.server_s += server_s

    def plain(self) -> dict[str, dict[str, float]]:
        return {name: asdict(stat) for name, stat in self.items()}


def backend_cpu_s(pid: int) -> float:
    """A local server process's CPU so far, in ns resolution (0 if it is not on this host)."""
    try:
        with open(f"/proc/{pid}/schedstat") as stat:
            return int(stat.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def label(query: str, args: tuple[Any, ...]) -> str:
    """The query's class: its name in queries.sql; `advance` with the stage it moves to."""
    name = QUERY_NAMES.get(query, "other")
    if name == "advance" and args[3]:
        return f"advance→{args[3][0]}"
    return name


def _rows(result: Any) -> int:
    return len(result) if isinstance(result, list) else 0


class TimedSessions(Sessions):
    """The daemon's Sessions, every ledger statement timed: the same retry policy and breaker
    around the same call on a pooled connection (as `Pool.fetch` does: acquire, then call)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stats = Stats()

    async def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self._call("postgres", "query", self._timed("fetch"), sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._call("postgres", "query", self._timed("fetchval"), sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        return await self._call("postgres", "query", self._timed("execute"), sql, *args)

    def _timed(self, method: str) -> Callable[..., Awaitable[Any]]:
        async def run(query: str, *args: Any) -> Any:
            began = time.perf_counter()
            async with self.db.pool.acquire() as conn:
                got, pid = time.perf_counter(), conn.get_server_pid()
                cpu = backend_cpu_s(pid)
                result = await getattr(conn, method)(query, *args)
                ended = time.perf_counter()
                self.stats.add(label(query, args), (began, got, ended),
                               backend_cpu_s(pid) - cpu, _rows(result))
            return result
        return run

    async def _in_transaction(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        began = time.perf_counter()
        async with self.db.pool.acquire() as conn:
            got, pid = time.perf_counter(), conn.get_server_pid()
            cpu = backend_cpu_s(pid)
            async with conn.transaction():
                result = await fn(conn)
            self.stats.add(STORE_TX, (began, got, time.perf_counter()),
                           backend_cpu_s(pid) - cpu, 0)
        return result


# -- the stages, ledger writes only -----------------------------------------------------------

def _timings(rows: list[FileRow], *stages: str) -> None:
    """Stage times as `stages.timed` leaves them on the rows (values made up)."""
    for row in rows:
        for stage in stages:
            row.stage_ms[stage] = 1.234


async def _advance(rows: list[FileRow], env: Env, stage: str,
                   conn: Connection | None = None) -> None:
    """`stages.advance`: one ledger write for the group; a lost claim is a failed run here."""
    lost = await env.ledger.advance_many([(row, stage) for row in rows], conn)
    if lost:
        raise RuntimeError(f"{len(lost)} claims were lost: leases expired mid-run")


def _key(row: FileRow, env: Env) -> str:
    zone = env.zone(row.zone)
    return object_key(env.settings.storage.key_template, doc_type=zone.doc_type,
                      sha256=row.sha256 or "", name=PurePosixPath(row.fs_path).name,
                      zone=zone.name, found=row.discovered_at)


async def hash_stage(rows: list[FileRow], env: Env) -> None:
    """hash: a sha256 (distinct per file), content ownership, the object key, → upload."""
    for row in rows:
        row.sha256 = hashlib.sha256(f"{row.zone}/{row.rel_path}".encode()).hexdigest()
    _timings(rows, "hash")
    if await env.ledger.own_contents(rows):
        raise RuntimeError("a duplicate: the bench's contents are meant to be distinct")
    for row in rows:
        row.object_key = _key(row, env)
    await _advance(rows, env, "upload")


async def upload_stage(rows: list[FileRow], env: Env) -> None:
    for row in rows:
        row.etag = f'"{(row.sha256 or "")[:32]}"'
    _timings(rows, "upload")
    await _advance(rows, env, "store")


async def store_stage(rows: list[FileRow], env: Env) -> None:
    """store: in one transaction (the daemon's also inserts documents and chunks), → track."""
    for row in rows:
        row.outcome, row.chunks = "stored", 0
    _timings(rows, "extract", "embed", "store")
    await env.sessions.transaction(lambda conn: _advance(rows, env, "track", conn))


async def finish_stage(rows: list[FileRow], env: Env) -> None:
    _timings(rows, "finish")
    await _advance(rows, env, "done")


STEPS = {"hash": hash_stage, "upload": upload_stage, "store": store_stage,
         "finish": finish_stage}


async def carry(rows: list[FileRow], env: Env) -> int:
    """`pipeline.process` for a batch: stage by stage, all files of a stage together, as far as
    each goes now (to track, or done); claims let go. Returns how many files are done."""
    for stage, step in STEPS.items():
        group = [row for row in rows if row.stage == stage]
        if group:
            env.ledger.moved([row.id for row in group])
            await step(group, env)
    for row in rows:
        env.ledger.let_go(row)
    return sum(row.stage == "done" for row in rows)


class LedgerWorkers(Workers):
    """The supervisor's Workers (feeder, queue, claims) with `carry` for `pipeline.process`."""

    def __init__(self, env: Env, count: int, done: Callable[[int], None]) -> None:
        super().__init__(env, count)
        self.done = done

    async def _work(self) -> None:
        while True:
            batch = await self.queue.get()
            try:
                self.done(await carry(batch, self.env))
            finally:
                self.queue.task_done()


# -- the other loops of a daemon --------------------------------------------------------------

async def track(env: Env, stop: asyncio.Event) -> None:
    """`supervisor.Tracker.run` with `track_pending`'s MLflow run left out: a window of
    `window_files` files, or `window_s` since the oldest, then `claim_batch` and `tracked`."""
    window = env.settings.mlflow
    while not stop.is_set():
        files, oldest_s = await env.ledger.track_window()
        if files >= window.window_files or (files > 0 and oldest_s >= window.window_s):
            rows, _ = await env.ledger.claim_batch(window.window_files)
            if rows:
                await env.ledger.tracked([row.id for row in rows], RUN_ID)
            continue
        await sleep_unless(stop, min(1.0, window.window_s / 4))


async def upkeep(ledger: Ledger, lease_s: float) -> None:
    """`supervisor.Supervisor._leases`: every lease_s/3 (5 s at most)."""
    while True:
        await ledger.sessions.end_lost_sessions()
        await ledger.alive()
        await ledger.heartbeat()
        await ledger.reap_dead()
        await ledger.release_strays()
        await asyncio.sleep(min(5.0, lease_s / 3))


async def pulse(ledger: Ledger) -> None:
    """`supervisor.Supervisor._pulse`: the queue depth every PULSE_S."""
    while True:
        await asyncio.sleep(PULSE_S)
        await ledger.waiting()


# -- the process ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    """What one bench daemon is given (pickled to its process)."""

    index: int
    settings: dict[str, Any]  # the config document
    base: str  # the folder relative paths in it resolve against
    workers: int


@dataclass(frozen=True)
class Signals:
    """The parent's handles: the count of daemons ready, start, stop, and the count of files
    done."""

    ready: Synchronized[int]
    start: Event
    stop: Event
    done: Synchronized[int]


def _counter(count: Synchronized[int]) -> Callable[[int], None]:
    """Adds to a count shared between processes."""
    def add(more: int) -> None:
        if more:
            with count.get_lock():
                count.value += more
    return add


async def until(event: Event) -> None:
    """Wait for a process-shared event without blocking the loop; a thread that waits in
    short steps, so a cancelled wait never leaves one behind for asyncio.run to wait on."""
    while not await asyncio.to_thread(event.wait, 0.05):
        pass


async def _run(env: Env, workers: int, signals: Signals) -> None:
    """Everything the daemon runs against the ledger, from `start` until `stop`."""
    stop, pool = asyncio.Event(), LedgerWorkers(env, workers, _counter(signals.done))
    async with asyncio.TaskGroup() as group:
        group.create_task(pool.run())
        group.create_task(track(env, stop))
        loops = [group.create_task(upkeep(env.ledger, env.settings.pipeline.lease_s)),
                 group.create_task(pulse(env.ledger))]
        await until(signals.stop)
        stop.set()
        pool.stop.set()
        for task in loops:
            task.cancel()


async def serve(spec: Spec, signals: Signals, results: Queue[Any]) -> None:
    """Open the daemon's sessions, say ready, wait for the start, run until told to stop; its
    statements' timings (from the start on) go on `results` at once, before the shutdown."""
    settings = config.parse(spec.settings, Path(spec.base), env={})
    owner = this_process()
    sessions = TimedSessions(settings, health_owner=owner)
    async with sessions:
        ledger = Ledger(sessions, [z.name for z in settings.zones], owner,
                        settings.pipeline.lease_s)
        env = Env(settings, sessions, ledger, cast(Any, None), mode="daemon")  # no embedder
        await ledger.alive()
        _counter(signals.ready)(1)
        await until(signals.start)
        sessions.stats.clear()
        await _run(env, spec.workers, signals)
        results.put((spec.index, sessions.stats.plain(), None))
        await ledger.release_all()
        await ledger.stopped()


def main(spec: Spec, signals: Signals, results: Queue[Any]) -> None:
    """The process's entry point: its timings (or its error) go back on `results`."""
    try:
        asyncio.run(serve(spec, signals, results))
    except BaseException as exc:
        results.put((spec.index, {}, f"{type(exc).__name__}: {exc}"[:500]))
        raise
