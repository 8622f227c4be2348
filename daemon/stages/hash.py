"""Hash: read each file once, name its content, and decide whether it is new in its zone.

A small file's bytes are kept for the upload and the extraction, so it is read from disk once.
The deterministic object key is fixed here, before anything is uploaded, so a retried upload
always writes the same object; its `{found}` time is the ledger's discovery time, never the
clock, so hashing the file again gives the same key too.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

from daemon import liveness
from daemon.errors import PermanentError
from daemon.files import blocks, check_version
from daemon.objectstore import object_key
from daemon.stages import Env, Job, advance, pending, timed

KEEP_BYTES = 256 * 1024  # files up to this size are held in memory between stages
UNREADABLE = ("cannot read the file ({error}): give the daemon's user read access, then "
              "`python -m daemon quarantine retry`")


def digest(job: Job, max_bytes: int) -> None:
    """Stream the file through SHA-256; it must not change meanwhile. A small file's bytes
    are kept; a large one stays open for the stages after this one (`Job.opened`)."""
    size = job.row.size_bytes
    if size > max_bytes:
        raise PermanentError(f"file is {size} bytes, over pipeline.max_file_bytes ({max_bytes})")
    sha, kept = hashlib.sha256(), []
    try:
        handle = job.opened()
        for block in blocks(handle, size):
            sha.update(block)
            liveness.moved()  # a large file's hash is work that moves: keep its claim
            if size <= KEEP_BYTES:
                kept.append(block)
        check_version(os.fstat(handle.fileno()), job.version)
    except PermissionError as exc:
        raise PermanentError(UNREADABLE.format(error=exc.strerror or exc)) from exc
    job.row.sha256 = sha.hexdigest()
    if size <= KEEP_BYTES:
        job.body = b"".join(kept)
        job.close()


def digest_all(jobs: list[Job], max_bytes: int) -> None:
    for job in jobs:
        try:
            digest(job, max_bytes)
        except Exception as exc:
            job.error = exc


def _name_or_duplicate(job: Job, env: Env, owner: str | None) -> str:
    """The next stage: `finish` for a duplicate (nothing to store), else `upload` at its key."""
    if owner is not None:
        job.metadata["duplicate_of"], job.row.outcome, job.body = owner, "duplicate", None
        return "finish"
    job.row.object_key = object_key(env.settings.storage.key_template, doc_type=job.zone.doc_type,
                                    sha256=job.row.sha256 or "", name=job.source.name,
                                    zone=job.zone.name, found=job.row.discovered_at)
    return "upload"


async def run(jobs: list[Job], env: Env) -> None:
    with timed(jobs, "hash"):
        await asyncio.to_thread(digest_all, jobs, env.settings.pipeline.max_file_bytes)
    todo = pending(jobs)
    if not todo:
        return
    duplicates = await env.ledger.own_contents([job.row for job in todo])
    nexts = {job.row.id: _name_or_duplicate(job, env, duplicates.get(job.row.id)) for job in todo}
    await advance(todo, env, lambda job: nexts[job.row.id])
