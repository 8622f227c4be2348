"""Pipeline: runs the stages for a claimed batch of files, and the track stage for a batch.

A file resumes at the first stage its ledger row has not finished. Errors end here: transient
ones schedule another attempt with backoff until the budget is spent, everything else (and a
spent budget) quarantines the file. One canonical `file_processed` line is logged per file.

The work of a batch reports that it moves (`daemon.liveness`: a step done, a chunk embedded,
bytes read or sent): the ledger renews only claims whose work moves, and a stage whose work
has not moved for `pipeline.stage_timeout_s` is cancelled, its files retried later.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from daemon import failpoints, liveness
from daemon.errors import DaemonError, FileVanished, LeaseLost, TransientError
from daemon.ledger import FileRow
from daemon.logs import get_logger
from daemon.retry import describe, translate
from daemon.stages import (
    ChunkSource,
    EmbeddedChunk,
    Env,
    Job,
    Stage,
    embed,
    extract,
    finish,
    pending,
    store,
    track,
    upload,
)
from daemon.stages import hash as hash_stage

log = get_logger("dropzone.pipeline")

PLAN: dict[str, tuple[Stage, ...]] = {
    "hash": (hash_stage.run,),
    "upload": (upload.run,),
    "store": (extract.run, embed.run, store.run),
    "finish": (finish.run,),
}
TERMINAL = ("done", "quarantined")
CANCEL_WAIT_S = 10.0  # how long a stalled stage may take to unwind once cancelled


async def process(rows: list[FileRow], env: Env) -> list[int]:
    """Take a batch of claimed files as far as each can go now (to `track`, done, a retry or
    quarantine), stage by stage, all files of a stage together. Returns the ids of files whose
    outcome could not be recorded (the ledger was away): their claims are to be given back."""
    jobs = [Job(row, env.zone(row.zone)) for row in rows]
    try:
        await _run_stages(jobs, env)
    finally:
        for job in jobs:
            job.close()
    env.stored.set()
    stranded = []
    for job in jobs:
        try:
            await _settle(job, env)
        except Exception as exc:
            stranded.append(job.row.id)
            log.warning("outcome_not_recorded", zone=job.row.zone, path=job.row.rel_path,
                        error=describe(exc))
    return stranded


async def _run_stages(jobs: list[Job], env: Env) -> None:
    with liveness.reporting(partial(env.ledger.moved, [job.row.id for job in jobs])):
        for stage in PLAN:  # hash -> upload -> store -> finish: one pass carries a file through
            group = [job for job in pending(jobs) if job.row.stage == stage]
            if group:
                await _within_deadline(stage, group, env)


async def _within_deadline(stage: str, group: list[Job], env: Env) -> None:
    """Run a stage until it ends, or until its work has not moved for stage_timeout_s: then it
    is cancelled and its files are retried later (a call that never returns cannot keep them,
    nor this worker)."""
    limit_s, ids = env.settings.pipeline.stage_timeout_s, [job.row.id for job in group]
    env.ledger.moved(ids)
    task = asyncio.create_task(_run_stage(stage, group, env))
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=max(0.05, limit_s - env.ledger.idle_s(ids)))
            if not task.done() and env.ledger.idle_s(ids) >= limit_s:
                task.cancel()
                await asyncio.wait({task}, timeout=CANCEL_WAIT_S)
                _stalled(stage, group, limit_s)
                return
    finally:
        task.cancel()  # when this worker is cancelled (a drain), so is its stage


def _stalled(stage: str, group: list[Job], limit_s: float) -> None:
    error = TransientError(f"stage {stage} made no progress for {limit_s:g} s and was cancelled")
    for job in pending(group):
        job.error = error
    log.warning("stage_stalled", stage=stage, files=len(group), idle_s=limit_s)


def _marked(stream: ChunkSource) -> ChunkSource:
    """A large file's chunk stream that says, for each chunk, that its work moves."""
    async def marked() -> AsyncIterator[EmbeddedChunk]:
        async for item in stream():
            liveness.moved()
            yield item
    return marked


def _moved_after(step: Stage, group: list[Job]) -> None:
    """A step is done: the work moved; large files' chunks, embedded later, will say so too."""
    liveness.moved()
    if step is embed.run:
        for job in group:
            if job.chunk_stream is not None:
                job.chunk_stream = _marked(job.chunk_stream)


async def _run_stage(stage: str, group: list[Job], env: Env) -> None:
    """Run one stage for a group; if the group fails as a whole, run it file by file, so one
    bad file cannot hold the others back."""
    try:
        for step in PLAN[stage]:
            await step(group, env)
            _moved_after(step, group)
    except Exception as exc:
        if len(group) == 1:
            group[0].error = exc
            return
        for job in pending(group):
            await _run_stage(stage, [job], env)
        return
    for job in pending(group):
        if job.row.stage == stage:
            job.error = RuntimeError(f"stage {stage} did not record its result")
        else:
            failpoints.hit(f"after_{stage}")


async def _settle(job: Job, env: Env) -> None:
    """A file's end of this round: its failure handled, its claim let go, its line logged."""
    try:
        if isinstance(job.error, LeaseLost):
            raise job.error
        if job.error is not None:
            await _failed(job, env, job.error)
    except LeaseLost as exc:  # e.g. it stalled, and its lapsed claim was taken over meanwhile
        env.ledger.lost(job.row)
        log.warning("lease_lost", zone=job.row.zone, path=job.row.rel_path, error=str(exc))
        return
    env.ledger.let_go(job.row)
    if job.row.stage in TERMINAL:
        report(job, env)


def _vanished(exc: BaseException) -> FileVanished | None:
    """The FileVanished (or a FileNotFoundError reading the source) behind an error, if any."""
    seen: BaseException | None = exc
    visited: set[int] = set()  # a cause chain can loop back on itself
    while seen is not None and id(seen) not in visited:
        if isinstance(seen, FileVanished):
            return seen
        if isinstance(seen, FileNotFoundError):
            return FileVanished("deleted while being processed")
        visited.add(id(seen))
        seen = seen.__cause__
    return None


def backoff_s(attempts: int, env: Env) -> float:
    """Exponential backoff with jitter, capped: 2 s, 4 s, 8 s ... up to retry_max_s."""
    pipeline = env.settings.pipeline
    ceiling = min(pipeline.retry_max_s, pipeline.retry_base_s * 2.0 ** attempts)
    return ceiling * random.uniform(0.5, 1.0)


async def _failed(job: Job, env: Env, exc: BaseException) -> None:
    gone = _vanished(exc)
    if gone is not None:
        await finish.drop_object(job, env)
        await env.ledger.advance(job.row, "done", outcome=gone.outcome)
        job.metadata["reason"] = str(gone)
        return
    if not isinstance(exc, DaemonError):
        log.error("stage_crashed", zone=job.row.zone, path=job.row.rel_path,
                  stage=job.row.stage, exc_info=exc)
    error = translate(exc, job.row.stage)
    if await _wait_out_outage(job, env, error):
        return
    budget_left = job.row.attempts + 1 < env.settings.pipeline.max_attempts
    if isinstance(error, TransientError) and budget_left:
        delay = backoff_s(job.row.attempts, env)
        await env.ledger.retry_later(job.row, describe(error), delay)
        if env.metrics is not None:
            env.metrics.retried("file_retry")
        log.warning("file_retry", zone=job.row.zone, path=job.row.rel_path, stage=job.row.stage,
                    attempts=job.row.attempts, retry_in_s=round(delay, 1), error=str(error))
        return
    try:
        await finish.quarantine(job, env, str(error))
    except DaemonError as failure:  # the quarantine folder itself may be unwritable
        if not await _wait_out_outage(job, env, failure):
            raise


async def _wait_out_outage(job: Job, env: Env, error: BaseException) -> bool:
    """If `error` came from a dependency that is down, reschedule the file without spending
    its retry budget (it is not the file's fault) and say True."""
    outage = env.sessions.outage(error)
    if outage is None:
        return False
    delay = min(60.0, max(1.0, outage.retry_at - time.monotonic())) * random.uniform(1, 1.5)
    await env.ledger.retry_later(job.row, describe(error), delay, counts=False)
    if env.metrics is not None:
        env.metrics.retried("outage")
    log.debug("file_waiting", zone=job.row.zone, path=job.row.rel_path,
              dependency=outage.name, retry_in_s=round(delay, 1))
    return True


def report(job: Job, env: Env) -> None:
    """The one canonical line for a file that has reached its end."""
    row = job.row
    outcome = row.outcome or row.stage
    env.counts[outcome] += 1
    if env.metrics is not None:
        env.metrics.file_done(row.zone, outcome, row.size_bytes, row.stage_ms)
    fields: dict[str, Any] = {
        "zone": row.zone, "path": row.rel_path, "outcome": outcome, "sha256": row.sha256,
        "object_key": row.object_key, "bytes": row.size_bytes, "chunks": row.chunks,
        "stage_ms": row.stage_ms, "attempts": row.attempts, "mlflow_run_id": row.mlflow_run_id,
    }
    fields.update({k: v for k, v in job.metadata.items()
                   if k in ("duplicate_of", "moved_to", "quarantined_to", "reason") and v})
    if outcome == "quarantined":
        log.error("file_processed", error=row.last_error, **fields)
    else:
        log.info("file_processed", **fields)


async def track_pending(env: Env, limit: int) -> int:
    """Record one batch of stored (or failed) files in MLflow; returns how many."""
    rows, resumed = await env.ledger.claim_batch(limit)
    if not rows:
        return 0
    try:
        with liveness.reporting(partial(env.ledger.moved, [row.id for row in rows])):
            await track.run_batch(rows, env, resumed)
    except BaseException:
        await env.ledger.release(r.id for r in rows)
        raise
    failpoints.hit("after_tracked")
    log.info("batch_tracked", files=len(rows), batch_id=str(rows[0].batch_id),
             per_file=env.settings.mlflow.run_per_file)
    return len(rows)
