"""Upload: put the file at its recorded key (multipart when large), with the configured SSE.

Re-running it rewrites the same object with the same bytes: the key was fixed by `hash`.
"""

from __future__ import annotations

from daemon.stages import Env, Job, timed


async def run(job: Job, env: Env) -> None:
    assert job.row.object_key, "hash records the key before upload runs"
    with timed(job, "upload"):
        put = await env.sessions.put_file(job.row.object_key, job.source)
    await env.ledger.advance(job.row, "store", etag=put.etag, stage_ms=job.timings)
