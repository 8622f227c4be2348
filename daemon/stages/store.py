"""Store: the document row, its chunks with their vectors, and the ledger, in one transaction.

Either all of it is committed or none of it, so a crash never leaves a document without its
chunks or a stored file the ledger does not know about. Chunks go in with binary COPY.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import PurePosixPath
from typing import Any

import asyncpg

from daemon.database import sql
from daemon.objectstore import content_type
from daemon.sessions import copy_embeddings
from daemon.stages import Env, Job

LAZY_STAGES = ("extract", "embed")  # their time is spent while this stage consumes them


async def run(job: Job, env: Env) -> None:
    before = {stage: job.timings.get(stage, 0.0) for stage in LAZY_STAGES}
    await env.sessions.transaction(partial(_store, job, env, before, time.perf_counter()))


async def _store(job: Job, env: Env, before: dict[str, float], start: float,
                 conn: asyncpg.Connection) -> None:
    doc_id, chunks, inserted = await _document(conn, job, env)
    if inserted and job.chunks is not None:
        chunks = await copy_embeddings(conn, _rows(job, env, doc_id))
        await conn.execute(sql("document_metadata"), doc_id, json.dumps(job.metadata))
    lazy = sum(job.timings.get(s, 0.0) - before[s] for s in LAZY_STAGES)
    job.timings["store"] = round((time.perf_counter() - start) * 1000 - lazy, 3)
    await env.ledger.advance(job.row, "track", conn=conn, document_id=doc_id, chunks=chunks,
                             outcome="stored", stage_ms=job.timings)


async def _document(conn: asyncpg.Connection, job: Job, env: Env) -> tuple[int, int, bool]:
    """(id, chunks already stored, inserted now) of this content's document."""
    row, key = job.row, job.row.object_key or ""
    job.metadata.update(name=PurePosixPath(row.rel_path).name, embedding_model=env.embedder.name)
    doc_id = await conn.fetchval(
        sql("insert_document"), row.zone, job.zone.doc_type, row.rel_path,
        env.sessions.object_url(key), row.sha256, row.size_bytes, content_type(key),
        json.dumps(job.metadata))
    if doc_id is not None:
        return int(doc_id), 0, True
    found = await conn.fetchrow(sql("find_document"), row.zone, row.sha256, env.embedder.name)
    return int(found["id"]), int(found["chunks"]), False


async def _rows(job: Job, env: Env, doc_id: int) -> AsyncIterator[tuple[Any, ...]]:
    assert job.chunks is not None
    native = env.sessions.db.vector
    key = env.sessions.store.full_key(job.row.object_key or "")
    async for item in job.chunks():
        vector = item.vector if native else item.vector.tolist()
        yield (doc_id, item.chunk.index, key, job.zone.doc_type, item.chunk.text,
               item.chunk.start, vector, env.embedder.name)
