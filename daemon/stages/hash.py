"""Hash: read the file once, name its content, and decide whether it is new in its zone.

The deterministic object key is computed and recorded here, before anything is uploaded, so a
retried upload always writes the same object.
"""

from __future__ import annotations

import asyncio
import hashlib

from daemon.errors import PermanentError
from daemon.files import open_version
from daemon.objectstore import object_key
from daemon.stages import Env, Job, timed

BLOCK_BYTES = 1 << 20


def sha256_of(job: Job, max_bytes: int) -> str:
    """Stream the file through SHA-256 in 1 MiB blocks; it must not change meanwhile."""
    if job.row.size_bytes > max_bytes:
        raise PermanentError(f"file is {job.row.size_bytes} bytes, over pipeline.max_file_bytes "
                             f"({max_bytes})")
    digest = hashlib.sha256()
    with open_version(job.source, job.version) as handle:
        while block := handle.read(BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


async def run(job: Job, env: Env) -> None:
    with timed(job, "hash"):
        sha256 = await asyncio.to_thread(sha256_of, job, env.settings.pipeline.max_file_bytes)
    owner = await env.ledger.own_content(job.row, sha256)
    if owner is not None:
        job.metadata["duplicate_of"] = owner
        await env.ledger.advance(job.row, "finish", sha256=sha256, outcome="duplicate",
                                 stage_ms=job.timings)
        return
    key = object_key(env.settings.storage.key_template, doc_type=job.zone.doc_type,
                     sha256=sha256, name=job.source.name, zone=job.zone.name)
    await env.ledger.advance(job.row, "upload", sha256=sha256, object_key=key,
                             stage_ms=job.timings)
