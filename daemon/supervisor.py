"""Supervisor: startup -> run -> drain -> shutdown, for the daemon and for `--once`.

In daemon mode it also speaks to systemd (READY=1 once the zones are watched and the object
store and MLflow answered, STATUS=, WATCHDOG=1 from the loop, STOPPING=1, RELOADING=1 on
SIGHUP, which reloads the zones: daemon/reload.py) and serves metrics when asked to.

Both modes run the same parts (watcher, workers fed from the ledger, tracker, lease heartbeat);
`--once` switches watching off, waits until everything it found is stored, records the whole
invocation as one MLflow batch, finishes the files and exits. Signal handlers only set a flag; a
second signal cancels at once. On drain, in-flight files get `drain_grace_s` to reach a durable
point, the rest are cancelled (and said so), and every claim is handed back.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, closing, suppress
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon import __version__, reload, systemd
from daemon.config import Settings
from daemon.embedders import create as create_embedder
from daemon.embedders.pool import EmbedPool
from daemon.errors import (
    EXIT_DEPENDENCY,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_QUARANTINED,
    EXIT_USAGE,
    ConfigError,
    DaemonError,
    DependencyDown,
    DependencyError,
    TransientError,
)
from daemon.identity import this_process
from daemon.ledger import FileRow, Ledger
from daemon.logs import get_logger, redact_text
from daemon.pipeline import process, track_pending
from daemon.reload import Watching
from daemon.retry import describe, retries_counted
from daemon.sessions import Sessions
from daemon.stages import Env
from daemon.vectorindex import VectorIndex
from daemon.watcher import Watcher

if TYPE_CHECKING:  # imported where used: only a terminal run needs tqdm, only metrics theirs
    from daemon.metrics import Metrics
    from daemon.progress import Progress

log = get_logger("dropzone.supervisor")
STORING = ("hash", "upload", "store")
LARGE_BYTES = 4 * 1024**2  # a file this large travels in a batch of its own
TRACKING_START_S = 5.0  # start MLflow this long after start-up if no file was stored before
READY_RETRY_S = 5.0  # a dependency that did not answer at start-up is asked again this often
PULSE_S = 5.0  # how often systemd's STATUS line is brought up to date
INTERRUPTED_GRACE_S = 1.0  # an interrupted --once waits this long for in-flight files
FORCED_EXIT_S = 3.0  # after a second signal, the process ends within this, closed or not


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
    level(event, error=str(exc), dependency=exc.dependency, **fields)  # folded while it is down


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
        self._feeder: asyncio.Task[None] | None = None

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            self._feeder = group.create_task(self._feed())
            workers = [group.create_task(self._work()) for _ in range(self.count)]
            await self.stop.wait()
            self._feeder.cancel()
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

    async def stop_claiming(self) -> None:
        """Take no more files: the feeder is cancelled before anything else waits, so a drain
        never hands out what it is giving back (as uvicorn stops accepting before it waits)."""
        if self._feeder is not None:
            self._feeder.cancel()
            await asyncio.wait([self._feeder])

    async def drain(self, grace_s: float) -> int:
        """Stop claiming, give queued files back, wait for in-flight ones; returns how many
        had to be cancelled."""
        await self.stop_claiming()
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

    def __init__(self, env: Env, eager: bool = False) -> None:
        self.env = env
        self.settings = env.settings.mlflow
        self.eager = eager  # record whatever is waiting, without a window
        self.busy_at = time.monotonic()  # when a window was last due

    async def _due(self) -> bool:
        files, oldest_s = await self.env.ledger.track_window()
        window = self.settings
        due = files >= window.window_files or (files > 0 and (
            self.eager or oldest_s >= window.window_s))
        self.busy_at = time.monotonic() if due or files else self.busy_at
        return due

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
            await self._rest_if_idle()
            await sleep_unless(stop, min(1.0, self.settings.window_s / 4))

    async def _rest_if_idle(self) -> None:
        """MLflow's process ends after `idle_stop_s` with nothing to record: a daemon that
        waits for files does not hold MLflow's ~150 MiB meanwhile."""
        idle_s, tracking = time.monotonic() - self.busy_at, self.env.sessions.tracking
        if self.settings.idle_stop_s and tracking.running and idle_s >= self.settings.idle_stop_s:
            await tracking.rest()
            log.info("mlflow_process_stopped", idle_s=round(idle_s, 1),
                     note="it starts again for the next window")

    async def record_all(self, horizon: int) -> int:
        """Record every waiting file we can claim (for `--once`); returns how many still wait
        (MLflow is away, or a live daemon or a dead one elsewhere holds them)."""
        try:
            while await track_pending(self.env, 1_000_000_000):
                pass
        except TransientError as exc:
            report_loop_error("tracking_failed", exc)
        return await self.env.ledger.untracked(horizon)


def _exit_if_still_closing(after_s: float) -> None:
    """After a second signal the clients close on a timer: closing waits for the MLflow and
    embedding processes to end their current call, which may never come (a hung server). A
    thread, since a blocked close would also block the event loop."""
    def hard_exit() -> None:
        log.error("close_abandoned", note=f"still closing after {after_s:.0f} s: exiting now")
        os._exit(EXIT_INTERRUPTED)
    timer = threading.Timer(after_s, hard_exit)
    timer.daemon = True
    timer.start()


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

    def __init__(self, settings: Settings, once: bool = False,
                 config_path: Path | None = None, progress: Progress | None = None) -> None:
        self.settings = settings
        self.once = once
        self.progress = progress  # `--once` on a terminal: a bar, then a summary table
        self._index_shown = False  # the search index's build has the bar (it is all that is left)
        self.config_path = config_path  # read again on SIGHUP (None: the default lookup)
        self.owner = this_process()
        self.notifier = systemd.Notifier.from_environment()
        self.should_exit = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.waiting: dict[str, int] | None = None  # files not yet at their end, by zone
        self.ready = False  # READY=1 was sent
        self.env: Env | None = None
        self.metrics: Metrics | None = None  # when metrics.listen is set
        self._main: asyncio.Task[Any] | None = None

    def run(self) -> int:
        return asyncio.run(self.serve())

    async def serve(self) -> int:
        self._main = asyncio.current_task()
        self._install_signal_handlers()
        log.info("starting", version=__version__, mode="once" if self.once else "daemon",
                 zones=[z.name for z in self.settings.zones], storage=self.settings.storage.url,
                 database=self.settings.database.url, mlflow=self.settings.mlflow.tracking_uri)
        try:
            embedder = self._embedder()  # an onnx model folder missing is a ConfigError
            with closing(embedder):
                async with self._metrics(), Sessions(self.settings,
                                                     health_owner=self.owner) as sessions:
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
        self.env = Env(self.settings, sessions, ledger, embedder,
                       mode="once" if self.once else "daemon", metrics=self.metrics)
        return self.env

    @asynccontextmanager
    async def _metrics(self) -> AsyncIterator[None]:
        """The Prometheus endpoint, when `metrics.listen` is set (daemon mode only: a `--once`
        beside a running daemon would find the port taken). Bound before anything else
        starts, so a port in use is said at once."""
        listen = self.settings.metrics.listen
        if self.once or not listen:
            yield
            return
        from daemon.metrics import Metrics, serve  # only now: prometheus_client costs ~40 ms

        self.metrics = Metrics()
        with retries_counted(self.metrics.retried):
            async with serve(self.metrics, listen, self._readiness):
                yield

    def _readiness(self) -> tuple[bool, str]:
        """For /readyz: ready once READY=1 was sent, while no dependency is down."""
        if self.should_exit.is_set():
            return False, "draining"
        if not self.ready or self.env is None:
            return False, "starting"
        down = [f"{b.name}: {b.reason}" for b in self.env.sessions.breakers.values()
                if b.is_open]
        return (False, redact_text("; ".join(down))) if down else (True, "ready")

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)

    def _on_hangup(self) -> None:
        if self.once:
            log.info("reload_ignored", reason="--once reads its configuration once")
            return
        log.info("reload_requested", signal="SIGHUP")
        self.reload_requested.set()

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.should_exit.is_set() and self._main is not None:
            self._main.cancel()  # a second signal: stop waiting for anything
            _exit_if_still_closing(FORCED_EXIT_S)
            return
        log.info("shutdown_requested", signal=sig.name)
        self.should_exit.set()

    async def _start_tracking(self, env: Env) -> None:
        """Start MLflow's process once the first files are stored, or after a few seconds:
        its start-up (3-4 s of CPU) then never competes with the first file's."""
        await sleep_unless(env.stored, TRACKING_START_S)
        env.sessions.tracking.start()

    async def _leases(self, ledger: Ledger) -> None:
        """Every lease_s/3 (5 s at most): Postgres sessions our pool lost ended, our heartbeat
        row, the leases of our claims whose work moves, and the claims of daemons whose
        heartbeat stopped set free. Cancelled after
        the claims were given back: the row then says so."""
        try:
            while True:
                try:
                    await ledger.sessions.end_lost_sessions()  # first: they may hold our rows
                    await ledger.alive()
                    await ledger.heartbeat()
                    await ledger.reap_dead()
                    await ledger.release_strays()
                except DaemonError as exc:
                    report_loop_error("lease_upkeep_failed", exc)
                await asyncio.sleep(min(5.0, self.settings.pipeline.lease_s / 3))
        except asyncio.CancelledError:
            with suppress(DaemonError):
                await ledger.stopped()
            raise

    async def _shutdown(self, env: Env, workers: Workers, grace_s: float) -> None:
        cancelled = await workers.drain(grace_s)
        if cancelled:
            log.warning("drain_timeout", cancelled=cancelled,
                        note="their claims are given back; another run resumes them")
        try:
            await env.ledger.release_all()
        except DaemonError as exc:
            log.warning("release_failed", error=str(exc), note="claims expire on their own")

    async def _run_daemon(self, env: Env) -> int:
        workers, stop_intake = Workers(env, self.settings.pipeline.workers), asyncio.Event()
        watching = Watching(env, self.settings.pipeline.rescan_s)
        async with asyncio.TaskGroup() as group:
            group.create_task(workers.run())
            group.create_task(watching.run(stop_intake))
            group.create_task(Tracker(env).run(stop_intake))
            upkeep = [group.create_task(task) for task in (
                self._start_tracking(env), self._leases(env.ledger), self.notifier.keep_alive(),
                self._become_ready(env, watching), VectorIndex(env.sessions).run())]
            await self.should_exit.wait()
            self.notifier.stopping(f"draining: {self._counts_text(env)}")
            stop_intake.set()
            await self._shutdown(env, workers, self.settings.pipeline.drain_grace_s)
            for task in upkeep:
                task.cancel()
        log.info("daemon_stopped", **env.counts)
        return EXIT_OK

    async def _become_ready(self, env: Env, watching: Watching) -> None:
        """READY=1 once every zone is watched and the object store and MLflow answered (the
        database did when the sessions opened); then live STATUS lines and reloads."""
        await watching.up.wait()
        for name, probe in (("objects", env.sessions.probe_store),
                            ("mlflow", self._probe_mlflow(env))):
            await self._until_answered(name, probe)
        self.notifier.ready(self._status_text(env))
        self.ready = True
        log.info("daemon_ready", zones=[z.name for z in env.settings.zones], owner=self.owner)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._pulse(env))
            group.create_task(self._reloads(env, watching))

    def _probe_mlflow(self, env: Env) -> Callable[[], Awaitable[Any]]:
        def probe() -> Awaitable[Any]:
            env.sessions.tracking.start()
            return env.sessions.probe_mlflow()
        return probe

    async def _until_answered(self, name: str, probe: Callable[[], Awaitable[Any]]) -> None:
        """Call `probe` until it succeeds, saying what is awaited in STATUS and the log."""
        while True:
            try:
                await probe()
                return
            except Exception as exc:  # a DaemonError, or a probe object that read back wrong
                error = describe(exc)
                self.notifier.status(f"waiting for {name}: {redact_text(error)}")
                log.warning("not_ready", dependency=name, error=error, retry_in_s=READY_RETRY_S)
            await asyncio.sleep(READY_RETRY_S)

    async def _pulse(self, env: Env) -> None:
        """Every few seconds: the live counts as systemd's STATUS line."""
        while True:
            await asyncio.sleep(PULSE_S)
            with suppress(DaemonError):  # an outage is logged where it is met; old counts stand
                self.waiting = await env.ledger.waiting()
            if self.metrics is not None and self.waiting is not None:
                for zone, files in self.waiting.items():
                    self.metrics.queue_depth(zone, files)
            self.notifier.status(self._status_text(env))

    def _status_text(self, env: Env) -> str:
        queued = "?" if self.waiting is None else str(sum(self.waiting.values()))
        zones = len(env.settings.zones)
        return f"watching {zones} zone(s); {queued} waiting; since start: {self._counts_text(env)}"

    @staticmethod
    def _counts_text(env: Env) -> str:
        outcomes = ("stored", "duplicate", "quarantined")
        return ", ".join(f"{env.counts[o]} {o}" for o in outcomes)

    async def _reloads(self, env: Env, watching: Watching) -> None:
        """On SIGHUP: RELOADING=1, then READY=1 once the new zones (or the old ones, if the
        new file is refused) are all watched."""
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            self.notifier.reloading()
            await self._reload(env, watching)
            self.notifier.ready(self._status_text(env))

    async def _reload(self, env: Env, watching: Watching) -> None:
        new = await reload.load(self.config_path)
        if new is None:
            return
        result = reload.plan(env.settings, new)
        if result.zones_changed:
            reload.apply(env, new.zones)
            await watching.rewatch()
        reload.report(result)

    async def _until_done(self, env: Env, left: Callable[[], Awaitable[int]], what: str) -> bool:
        """Poll until `left()` is 0, logging progress every 5 s; False if told to stop first."""
        mark, mark_left = time.monotonic(), None
        while not self.should_exit.is_set():
            self._give_up_on_outages(env)
            try:
                now_left = await left()
                if self.progress is not None:
                    self.progress.update(what, now_left)
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
        """Scan, store everything found, record it in MLflow, finish the files; the search
        index, if it was dropped for the backlog, is built meanwhile. False if the files
        could not be recorded (MLflow stayed away): they stay for the next run."""
        watcher = Watcher(self.settings.zones, env.ledger, self.settings.pipeline.rescan_s)
        await watcher.run_once(self.should_exit)
        index = VectorIndex(env.sessions, self._index_progress)
        await index.upkeep()  # a large backlog goes in without the search index
        horizon = await env.ledger.horizon()
        if not await self._store_all(env, horizon):
            return True
        building = asyncio.create_task(self._build_index(index))
        try:
            recorded = await self._record_and_finish(env, horizon)
        except BaseException:
            building.cancel()
            await asyncio.gather(building, return_exceptions=True)
            raise
        self._index_shown = True  # the bars of recording and finishing are done
        await building
        return recorded

    async def _store_all(self, env: Env, horizon: int) -> bool:
        """Wait until every file found is stored; False if told to stop first. With a run per
        file there is no batch to wait for: files are recorded as they are stored."""
        stored = partial(env.ledger.unfinished, horizon, STORING)
        if not self.settings.mlflow.run_per_file:
            return await self._until_done(env, stored, "storing")
        stop = asyncio.Event()
        recording = asyncio.create_task(Tracker(env, eager=True).run(stop))
        try:
            return await self._until_done(env, stored, "storing")
        finally:
            stop.set()
            await recording

    async def _record_and_finish(self, env: Env, horizon: int) -> bool:
        recorded = partial(Tracker(env).record_all, horizon)
        try:
            await self._until_done(env, recorded, "recording")
        except DependencyError as exc:
            log.error("tracking_failed", error=str(exc), waiting=await recorded(),
                      hint="these files stay in their zone; the next run records them")
            return False
        await self._until_done(env, partial(env.ledger.unfinished, horizon, ("finish",)),
                               "finishing")
        return True

    async def _build_index(self, index: VectorIndex) -> None:
        """The index built again if it was dropped and no backlog is left; a stop request
        cuts the build short (the next run builds it)."""
        if self.should_exit.is_set():
            return
        build = asyncio.ensure_future(index.upkeep())
        stop = asyncio.ensure_future(self.should_exit.wait())
        try:
            await asyncio.wait({build, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this task is cancelled: asyncio.wait leaves its tasks running
            stop.cancel()
            if not build.done():
                build.cancel()
                await asyncio.gather(build, return_exceptions=True)
                log.warning("search_index_not_built", reason="the run stopped first",
                            effect="search works without it; the next run builds it")

    def _index_progress(self, chunks_left: int) -> None:
        if self.progress is not None and self._index_shown:
            self.progress.update("indexing", chunks_left, unit="chunks")

    async def _run_once(self, env: Env) -> int:
        started, workers = time.monotonic(), Workers(env, self.settings.pipeline.workers)
        async with asyncio.TaskGroup() as group:
            group.create_task(workers.run())
            upkeep = [group.create_task(self._start_tracking(env)),
                      group.create_task(self._leases(env.ledger))]
            tracked = await self._drain_once(env)
            await self._shutdown(env, workers, self._once_grace_s())
            for task in upkeep:
                task.cancel()
        if self.should_exit.is_set():
            await self._say_what_resumes(env)
        elapsed = time.monotonic() - started
        done = sum(env.counts.values())
        log.info("once_finished", elapsed_s=round(elapsed, 3),
                 files_per_s=round(done / elapsed, 1) if elapsed else None, **env.counts)
        if self.progress is not None:
            self.progress.finish(env.counts, elapsed)
        return self._exit_code(env, tracked)

    def _once_grace_s(self) -> float:
        """A finished `--once` waits for every batch; an interrupted one gives in-flight files
        a moment to reach their next checkpoint, then cancels them: the ledger resumes them."""
        grace_s = self.settings.pipeline.drain_grace_s
        return min(grace_s, INTERRUPTED_GRACE_S) if self.should_exit.is_set() else grace_s

    async def _say_what_resumes(self, env: Env) -> None:
        """One line for an interrupted `--once`: how many files the next run takes up."""
        try:
            left: int | str = sum((await env.ledger.waiting()).values())
        except DaemonError:  # Postgres is away: the files are safe, their number unknown
            left = "unknown"
        log.warning("once_interrupted", files_left=left,
                    note="interrupted: these files stay in their zones and resume on the next run")

    def _exit_code(self, env: Env, tracked: bool) -> int:
        if self.should_exit.is_set():
            return EXIT_INTERRUPTED
        if not tracked:
            return EXIT_DEPENDENCY
        return EXIT_QUARANTINED if env.counts["quarantined"] else EXIT_OK
