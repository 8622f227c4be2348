"""Upload: put each file at its recorded key (multipart when large), with the configured SSE,
all files of a batch at once.

Re-running it rewrites the same object with the same bytes: the key was fixed by `hash`. What
is sent is read from the descriptor `hash` read (or, for a file resumed here, one opened now)
and must hash to the key's SHA-256 before the object becomes visible; the server checks each
PUT's and each part's checksum too. A file changed meanwhile is superseded, nothing stored.
"""

from __future__ import annotations

import asyncio

from daemon.stages import Env, Job, advance, each, timed


async def _put(job: Job, env: Env) -> None:
    key, sha256 = job.row.object_key, job.row.sha256
    assert key and sha256, "hash records the content and its key before upload runs"
    if job.body is not None:  # the very bytes that were hashed
        put = await env.sessions.put_object(key, job.body, bytes.fromhex(sha256))
    else:
        handle = await asyncio.to_thread(job.opened)
        put = await env.sessions.put_stream(key, handle, job.row.size_bytes,
                                            bytes.fromhex(sha256))
    job.row.etag = put.etag


async def run(jobs: list[Job], env: Env) -> None:
    with timed(jobs, "upload"):
        await each(jobs, lambda job: _put(job, env))
    await advance(jobs, env, "store")
