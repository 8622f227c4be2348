"""Supervisor: startup -> run -> drain -> shutdown, for the daemon and for `--once`.

Both modes run the same parts (watcher, workers fed from the ledger, tracker, lease heartbeat);
`--once` switches watching off, waits until everything it found is stored, records the whole
invocation as one MLflow batch, finishes the files and exits. Signal handlers only set a flag; a
second signal cancels at once. On drain, in-flight files get `drain_grace_s` to reach a durable
point, the rest are cancelled (and said so), and every claim is handed back.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from functools import partial
from typing import Any

from daemon import __version__, systemd
from daemon.config import Settings
from daemon.embedders import create as create_embedder
from daemon.embedders.pool import EmbedPool
from daemon.errors import (
    ConfigError,
    DaemonError,
    DependencyDown,
    DependencyError,
    TransientError,
)
from daemon.identity import this_process
from daemon.ledger import FileRow, Ledger
from daemon.logs import get_logger
from daemon.pipeline import process, track_pending
from daemon.sessions import Sessions
from daemon.stages import Env
from daemon.watcher import Watcher

log = get_logger("dropzone.supervisor")
STORING = ("hash", "upload", "store")
LARGE_BYTES = 4 * 1024**2  # a file this large travels in a batch of its own
TRACKING_START_S = 5.0  # start MLflow this long after start-up if no file was stored before
EXIT_OK, EXIT_QUARANTINED, EXIT_USAGE, EXIT_DEPENDENCY, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


async def sleep_unless(event: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True if `event` was set meanwhile."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True


def report_loop_error(event: str, exc: DaemonError, **fields: Any) -> None:
    """A background loop failed once; it tries again. A known outage was logged already."""
    level = log.debug if isinstance(exc, DependencyDown) else log.warning
    level(event, error=str(exc), **fields)


def batches(rows: list[FileRow]) -> list[list[FileRow]]:
    """Small files travel together; a large one alone, so it never holds small ones back."""
    large = [[row] for row in rows if row.size_bytes > LARGE_BYTES]
    small = [row for row in rows if row.size_bytes <= LARGE_BYTES]
    return large + ([small] if small else [])


class Workers:
    """N workers fed from the ledger through a bounded queue of batches: claims never outrun
    the workers."""

    def __init__(self, env: Env, count: int) -> None:
        self.env = env
        self.queue: asyncio.Queue[list[FileRow]] = asyncio.Queue(maxsize=count)
        self.count = count
        self.busy = 0
        self.stranded: set[int] = set()  # claims we could not record (Postgres was away)
        self.idle = asyncio.Event()
        self.idle.set()
        self.stop = asyncio.Event()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            feeder = group.create_task(self._feed())
            workers = [group.create_task(self._work()) for _ in range(self.count)]
            await self.stop.wait()
            feeder.cancel()
            for worker in workers:
                worker.cancel()

    async def _claim(self) -> list[FileRow]:
        self.env.ledger.wakeup.clear()
        try:
            if self.stranded:  # give them back now rather than after their lease
                await self.env.ledger.release(self.stranded)
                self.stranded.clear()
            return await self.env.ledger.claim(self.env.settings.pipeline.batch_files)
        except DaemonError as exc:
            report_loop_error("claim_failed", exc)
            return []

    async def _feed(self) -> None:
        while True:
            rows = await self._claim()
            for batch in batches(rows):
                await self.queue.put(batch)
            if not rows:
                await sleep_unless(self.env.ledger.wakeup, self.env.settings.pipeline.poll_s)

    async def _work(self) -> None:
        while True:
            batch = await self.queue.get()
            self.busy += 1
            self.idle.clear()
            try:
                self.stranded.update(await process(batch, self.env))
            except Exception as exc:  # a bug: give the claims back, say so, carry on
                self.stranded.update(row.id for row in batch)
                log.error("worker_failed", files=len(batch), exc_info=exc)
            finally:
                self.busy -= 1
                if not self.busy:
                    self.idle.set()
                self.queue.task_done()

    async def drain(self, grace_s: float) -> int:
        """Stop claiming, give queued files back, wait for in-flight ones; returns how many
        had to be cancelled."""
        queued: list[int] = []
        while not self.queue.empty():
            queued.extend(row.id for row in self.queue.get_nowait())
            self.queue.task_done()
        await self.env.ledger.release(queued)
        await sleep_unless(self.idle, grace_s)
        left = self.busy
        self.stop.set()
        return left


class Tracker:
    """Closes MLflow batch windows: `window_files` files or `window_s` seconds, whichever first."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.settings = env.settings.mlflow

    async def _due(self) -> bool:
        files, oldest_s = await self.env.ledger.track_window()
        window = self.settings
        return files >= window.window_files or (files > 0 and oldest_s >= window.window_s)

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                if await self._due():
                    await track_pending(self.env, self.settings.window_files)
                    failures = 0
                    continue
            except DaemonError as exc:
                failures += 1
                report_loop_error("tracking_failed", exc, retry_in_s=min(60, 2**failures))
                await sleep_unless(stop, min(60, 2**failures))
                continue
            await sleep_unless(stop, min(1.0, self.settings.window_s / 4))

    async def record_all(self, horizon: int) -> int:
        """Record every waiting file we can claim (for `--once`); returns how many still wait
        (MLflow is away, or a live daemon or a dead one elsewhere holds them)."""
        try:
            while await track_pending(self.env, 1_000_000_000):
                pass
        except TransientError as exc:
            report_loop_error("tracking_failed", exc)
        return await self.env.ledger.untracked(horizon)


def first_daemon_error(exc: BaseException) -> DaemonError | None:
    """The first of our errors inside an exception (group), if any."""
    if isinstance(exc, DaemonError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = first_daemon_error(inner)
            if found is not None:
                return found
    return None


def _exit_for(exc: BaseException) -> int:
    """A dependency that stayed away, or a config the database refused: say so, exit 3 or 2."""
    error = first_daemon_error(exc)
    if error is None:
        raise exc
    if isinstance(error, ConfigError):
        log.error("config_refused", error=str(error))
        return EXIT_USAGE
    log.error("dependency_unreachable", error=str(error))
    return EXIT_DEPENDENCY


class Supervisor:
    """Runs one daemon (or one `--once`) from start to exit code."""

    def __init__(self, settings: Settings, once: bool = False) -> None:
        self.settings = settings
        self.once = once
        self.owner = this_process()
        self.should_exit = asyncio.Event()
        self._main: asyncio.Task[Any] | None = None

    def run(self) -> int:
        return asyncio.run(self.serve())

    async def serve(self) -> int:
        self._main = asyncio.current_task()
        self._install_signal_handlers()
        log.info("starting", version=__version__, mode="once" if self.once else "daemon",
                 zones=[z.name for z in self.settings.zones], storage=self.settings.storage.url,
                 database=self.settings.database.url, mlflow=self.settings.mlflow.tracking_uri)
        embedder = self._embedder()
        try:
            with closing(embedder):
                async with Sessions(self.settings) as sessions:
                    env = self._env(sessions, embedder)
                    return await (self._run_once(env) if self.once else self._run_daemon(env))
        except (DaemonError, BaseExceptionGroup) as exc:
            return _exit_for(exc)
        except asyncio.CancelledError:
            log.warning("forced_exit")
            return EXIT_INTERRUPTED

    def _embedder(self) -> EmbedPool:
        """The embedder, its worker processes starting while the sessions open."""
        settings = self.settings
        embedder = EmbedPool(create_embedder(settings.embedding), settings.embedding,
                             settings.pipeline.cpu_workers)
        embedder.start()
        return embedder

    def _env(self, sessions: Sessions, embedder: EmbedPool) -> Env:
        zones = [z.name for z in self.settings.zones]
        ledger = Ledger(sessions, zones, self.owner, self.settings.pipeline.lease_s)
        return Env(self.settings, sessions, ledger, embedder,
                   mode="once" if self.once else "daemon")

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.should_exit.is_set() and self._main is not None:
            self._main.cancel()  # a second signal: stop waiting for anything
            return
        log.info("shutdown_requested", signal=sig.name)
        self.should_exit.set()

    async def _start_tracking(self, env: Env) -> None:
        """Start MLflow's process once the first files are stored, or after a few seconds:
        its start-up (3-4 s of CPU) then never competes with the first file's."""
        await sleep_unless(env.stored, TRACKING_START_S)
        env.sessions.tracking.start()

    async def _leases(self, ledger: Ledger) -> None:
        """Renew our leases every lease_s/3; every few seconds, free the claims of the dead."""
        renew_every, renewed = self.settings.pipeline.lease_s / 3, time.monotonic()
        while True:
            try:
                await ledger.reap_dead()
                await ledger.release_strays()
                if time.monotonic() - renewed >= renew_every:
                    await ledger.heartbeat()
                    renewed = time.monotonic()
            except DaemonError as exc:
                report_loop_error("lease_upkeep_failed", exc)
            await asyncio.sleep(min(5.0, renew_every))

    async def _shutdown(self, env: Env, workers: Workers) -> None:
        cancelled = await workers.drain(self.settings.pipeline.drain_grace_s)
        if cancelled:
            log.warning("drain_timeout", cancelled=cancelled,
                        note="their claims are given back; another run resumes them")
        try:
            await env.ledger.release_all()
        except DaemonError as exc:
            log.warning("release_failed", error=str(exc), note="claims expire on their own")

    async def _run_daemon(self, env: Env) -> int:
        workers, stop_intake = Workers(env, self.settings.pipeline.workers), asyncio.Event()
        watcher = Watcher(self.settings.zones, env.ledger, self.settings.pipeline.rescan_s)
        watching = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            group.create_task(workers.run())
            group.create_task(watcher.run(stop_intake, watching))
            group.create_task(Tracker(env).run(stop_intake))
            upkeep = [group.create_task(self._start_tracking(env)),
                      group.create_task(self._leases(env.ledger))]
            await watching.wait()
            systemd.notify("READY=1", f"STATUS=watching {len(self.settings.zones)} zone(s)")
            log.info("daemon_ready", zones=[z.name for z in self.settings.zones], owner=self.owner)
            await self.should_exit.wait()
            systemd.notify("STOPPING=1")
            stop_intake.set()
            await self._shutdown(env, workers)
            for task in upkeep:
                task.cancel()
        log.info("daemon_stopped", **env.counts)
        return EXIT_OK

    async def _until_done(self, env: Env, left: Callable[[], Awaitable[int]], what: str) -> bool:
        """Poll until `left()` is 0, logging progress every 5 s; False if told to stop first."""
        mark, mark_left = time.monotonic(), None
        while not self.should_exit.is_set():
            self._give_up_on_outages(env)
            try:
                now_left = await left()
            except TransientError as exc:  # Postgres away: the breaker times the outage
                report_loop_error("progress_unknown", exc)
                await sleep_unless(self.should_exit, 1.0)
                continue
            if not now_left:
                return True
            if mark_left is None or time.monotonic() - mark >= 5:
                rate = (mark_left - now_left) / (time.monotonic() - mark) if mark_left else 0.0
                log.info("progress", stage=what, files_left=now_left,
                         files_per_s=round(rate, 1))
                mark, mark_left = time.monotonic(), now_left
            await sleep_unless(self.should_exit, 0.1)
        return False

    def _give_up_on_outages(self, env: Env) -> None:
        """`--once` waits out a dependency for `outage_wait_s`, but not one that refuses."""
        for breaker in env.sessions.breakers.values():
            too_long = breaker.down_s() > self.settings.pipeline.outage_wait_s
            if breaker.refused or too_long:
                raise DependencyError(f"{breaker.name}: {breaker.reason}")

    async def _drain_once(self, env: Env) -> bool:
        """Scan, store everything found, record it in MLflow, finish the files. False if the
        files could not be recorded (MLflow stayed away): they stay for the next run."""
        await Watcher(self.settings.zones, env.ledger, self.settings.pipeline.rescan_s).run_once()
        horizon = await env.ledger.horizon()
        stored = partial(env.ledger.unfinished, horizon, STORING)
        recorded = partial(Tracker(env).record_all, horizon)
        finished = partial(env.ledger.unfinished, horizon, ("finish",))
        if not await self._until_done(env, stored, "storing"):
            return True
        try:
            await self._until_done(env, recorded, "recording")
        except DependencyError as exc:
            log.error("tracking_failed", error=str(exc), waiting=await recorded(),
                      hint="these files stay in their zone; the next run records them")
            return False
        await self._until_done(env, finished, "finishing")
        return True

    async def _run_once(self, env: Env) -> int:
        started, workers = time.monotonic(), Workers(env, self.settings.pipeline.workers)
        async with asyncio.TaskGroup() as group:
            group.create_task(workers.run())
            upkeep = [group.create_task(self._start_tracking(env)),
                      group.create_task(self._leases(env.ledger))]
            tracked = await self._drain_once(env)
            await self._shutdown(env, workers)
            for task in upkeep:
                task.cancel()
        elapsed = time.monotonic() - started
        done = sum(env.counts.values())
        log.info("once_finished", elapsed_s=round(elapsed, 3),
                 files_per_s=round(done / elapsed, 1) if elapsed else None, **env.counts)
        return self._exit_code(env, tracked)

    def _exit_code(self, env: Env, tracked: bool) -> int:
        if self.should_exit.is_set():
            return EXIT_INTERRUPTED
        if not tracked:
            return EXIT_DEPENDENCY
        return EXIT_QUARANTINED if env.counts["quarantined"] else EXIT_OK
