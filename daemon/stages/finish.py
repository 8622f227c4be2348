"""Finish: the source leaves the zone (moved to the done folder, deleted, or kept) only after
every sink has the file; and quarantine, for files that cannot be processed.

A source that changed since it was found is left alone: it is a new version, and the watcher
will bring it back. Moves never overwrite: a taken name gets `.1`, `.2`, ... before its suffix.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import daemon
from daemon import failpoints
from daemon.errors import DaemonError
from daemon.files import free_path, is_version, move, write_json
from daemon.logs import get_logger
from daemon.retry import describe
from daemon.stages import Env, Job, advance, timed

log = get_logger("dropzone.finish")
REPORT_SUFFIX = ".error.json"  # beside each quarantined file
LEFT_FIX = ("let the daemon's user write the file's folder and read the file; it is not taken "
            "again unless it changes")


def release_source(job: Job) -> str | None:
    """Apply the zone's `after` rule; returns where the file went, if it moved."""
    if not is_version(job.source, job.version) or job.zone.after == "keep":
        return None
    with left_in_place(job, "done"):
        if job.zone.after == "delete":
            job.source.unlink(missing_ok=True)
            return None
        return str(move(job.source, job.zone.done_dir / job.row.fs_path))
    return None


def stuck_in_zone(source: Path) -> bool:
    """True if the zone's side refuses: its folder may not be written (the file cannot leave
    it) or the file may not be read (it cannot be copied to another filesystem)."""
    return not (os.access(source.parent, os.W_OK | os.X_OK) and os.access(source, os.R_OK))


@contextmanager
def left_in_place(job: Job, where: str) -> Iterator[None]:
    """A file the zone will not let go of stays where it is, said once; the done or
    quarantine folder refusing is a configuration error, raised for the breaker to hold."""
    try:
        yield
    except PermissionError as exc:
        if not stuck_in_zone(job.source):
            raise
        job.metadata["left_in_place"] = True
        log.warning("source_left_in_place", zone=job.zone.name, path=job.row.rel_path,
                    wanted=where, error=describe(exc), fix=LEFT_FIX)


def release_sources(jobs: list[Job]) -> None:
    """One thread hop for a whole batch. A failure here is the disk's, not a file's (a vanished
    or changed source is simply left alone), so it fails the batch."""
    for job in jobs:
        job.metadata["moved_to"] = release_source(job)
        failpoints.hit("after_move")


async def run(jobs: list[Job], env: Env) -> None:
    with timed(jobs, "finish"):
        await env.sessions.on_disk("finish", release_sources, jobs)
    await advance(jobs, env, "done")


def error_report(job: Job, reason: str) -> dict[str, object]:
    return {
        "zone": job.zone.name, "path": job.row.rel_path, "reason": reason,
        "stage": job.row.stage, "attempts": job.row.attempts + 1, "sha256": job.row.sha256,
        "size_bytes": job.row.size_bytes, "ledger_id": job.row.id,
        "quarantined_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dropzone_version": daemon.__version__,
    }


def quarantine_source(job: Job, reason: str) -> str | None:
    """Move the file to the zone's quarantine folder with `<name>.error.json` beside it; a
    file that cannot leave its zone stays, and its report says where it is."""
    if not is_version(job.source, job.version):
        return None
    final = free_path(job.zone.quarantine_dir / job.row.fs_path, len(REPORT_SUFFIX))
    report = error_report(job, reason)
    write_json(Path(f"{final}{REPORT_SUFFIX}"), report)  # the reason first
    with left_in_place(job, "quarantine"):
        return str(move(job.source, final))
    write_json(Path(f"{final}{REPORT_SUFFIX}"), {**report, "left_in_place": str(job.source)})
    return None


async def quarantine(job: Job, env: Env, reason: str) -> None:
    job.metadata["quarantined_to"] = await env.sessions.on_disk("quarantine", quarantine_source,
                                                                job, reason)
    await drop_object(job, env)
    await env.ledger.quarantine(job.row, reason)


async def drop_object(job: Job, env: Env) -> None:
    """A file that ends without a document (quarantined, changed, deleted) leaves no object:
    its own is deleted unless a document (of any zone: content is shared when the key template
    has no {zone}) or another file on its way names it. Called while this row still owns its
    content in its zone, so no other version can start storing the same object meanwhile.
    Best effort: an object that cannot be deleted now (a store that is away, or that refuses
    deletes under a least-privilege policy) is logged, and left for `python -m daemon gc`."""
    row = job.row
    if row.object_key is None or row.stage not in ("upload", "store"):
        return
    try:
        if not await env.ledger.object_wanted(row, env.sessions.object_url(row.object_key)):
            await env.sessions.delete_object(row.object_key)
    except DaemonError as exc:
        log.warning("object_left", zone=row.zone, path=row.rel_path, key=row.object_key,
                    error=str(exc), fix="python -m daemon gc")
