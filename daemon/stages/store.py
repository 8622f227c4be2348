"""Store: the documents, their chunks with their vectors, and the ledger, in one transaction
for a whole batch.

Either all of it is committed or none of it, so a crash never leaves a document without its
chunks or a stored file the ledger does not know about. Chunks go in with one binary COPY.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from functools import partial
from pathlib import PurePosixPath
from typing import Any

import asyncpg

from daemon.database import sql
from daemon.objectstore import content_type
from daemon.stages import EmbeddedChunk, Env, Job, advance, pending

LAZY_STAGES = ("extract", "embed")  # a large file's are spent while this stage consumes them


def _lazy_ms(job: Job) -> float:
    return sum(job.timings.get(stage, 0.0) for stage in LAZY_STAGES)


async def run(jobs: list[Job], env: Env) -> None:
    todo = pending(jobs)
    if not todo:
        return
    clock = _StoreClock(todo)
    await env.sessions.transaction(partial(_store, todo, env, clock))


class _StoreClock:
    """The store stage's time per file, taken just before the ledger write that records it
    (inside the transaction): the batch's time shared out, minus what a large file's stream
    spent extracting and embedding meanwhile (that is theirs, not store's)."""

    def __init__(self, jobs: list[Job]) -> None:
        self.start = time.perf_counter()
        self.lazy = {job.row.id: _lazy_ms(job) for job in jobs}
        self.base = {job.row.id: job.timings.get("store", 0.0) for job in jobs}

    def charge(self, jobs: list[Job]) -> None:
        share = (time.perf_counter() - self.start) * 1000 / len(jobs)
        for job in jobs:
            lazy = _lazy_ms(job) - self.lazy[job.row.id]
            job.timings["store"] = round(self.base[job.row.id] + share - lazy, 3)


async def _store(jobs: list[Job], env: Env, clock: _StoreClock,
                 conn: asyncpg.Connection) -> None:
    fresh = await _documents(conn, jobs, env)
    counts: Counter[int] = Counter()
    await env.sessions.db.copy_embeddings(conn, _rows(fresh, env, counts))
    for job in fresh:
        job.row.chunks = counts[job.row.id]
        if job.chunk_stream is not None:  # its metadata (chars, binary) is known only now
            await conn.execute(sql("document_metadata"), job.row.document_id,
                               json.dumps(job.metadata))
    for job in jobs:
        job.row.outcome = "stored"
    clock.charge(jobs)
    await advance(jobs, env, "track", conn)


def _document_values(job: Job, env: Env) -> tuple[Any, ...]:
    row, key = job.row, job.row.object_key or ""
    job.metadata.update(name=PurePosixPath(row.rel_path).name, embedding_model=env.embedder.name)
    return (row.zone, job.zone.doc_type, row.rel_path, env.sessions.object_url(key), row.sha256,
            row.size_bytes, content_type(key), json.dumps(job.metadata))


async def _documents(conn: asyncpg.Connection, jobs: list[Job], env: Env) -> list[Job]:
    """Insert the documents; returns the jobs whose document is new here (they need chunks).
    A document that already exists (a retry, a takeover) keeps its id and its chunks."""
    columns = list(zip(*(_document_values(job, env) for job in jobs), strict=True))
    inserted = {(r["zone"], r["sha256"]): r["id"]
                for r in await conn.fetch(sql("insert_document"), *columns)}
    for job in jobs:
        job.row.document_id = inserted.get((job.row.zone, job.row.sha256))
    fresh = [job for job in jobs if job.row.document_id is not None]
    old = [job for job in jobs if job.row.document_id is None]
    if old:
        found = await conn.fetch(sql("find_document"), [j.row.zone for j in old],
                                 [j.row.sha256 for j in old], env.embedder.name)
        existing = {(r["zone"], r["sha256"]): r for r in found}
        for job in old:
            record = existing[job.row.zone, job.row.sha256]
            job.row.document_id, job.row.chunks = record["id"], record["chunks"]
    return fresh


async def _chunks_of(job: Job) -> AsyncIterator[EmbeddedChunk]:
    if job.chunk_stream is not None:
        async for item in job.chunk_stream():
            yield item
    for item in job.chunks or ():
        yield item


async def _rows(jobs: list[Job], env: Env, counts: Counter[int]) -> AsyncIterator[tuple[Any, ...]]:
    for job in jobs:
        key = env.sessions.store.full_key(job.row.object_key or "")
        async for item in _chunks_of(job):
            counts[job.row.id] += 1
            yield (job.row.document_id, item.chunk.index, key, job.zone.doc_type,
                   item.chunk.text, item.chunk.start, item.vector, env.embedder.name)
