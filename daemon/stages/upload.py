"""Upload: put each file at its recorded key (multipart when large), with the configured SSE,
all files of a batch at once.

Re-running it rewrites the same object with the same bytes: the key was fixed by `hash`.
"""

from __future__ import annotations

from daemon.stages import Env, Job, advance, each, timed


async def _put(job: Job, env: Env) -> None:
    key = job.row.object_key
    assert key, "hash records the key before upload runs"
    if job.body is not None:
        put = await env.sessions.put_object(key, job.body)
    else:
        put = await env.sessions.put_file(key, job.source)
    job.row.etag = put.etag


async def run(jobs: list[Job], env: Env) -> None:
    with timed(jobs, "upload"):
        await each(jobs, lambda job: _put(job, env))
    await advance(jobs, env, "store")
