"""Embed: chunk the text stream and embed the chunks in batches, off the event loop.

Lazy like extraction: chunks are produced as the store stage consumes them, so a large file is
never held in memory whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial

from daemon.chunking import Chunk, Chunker
from daemon.stages import EmbeddedChunk, Env, Job, TextSource, timed


async def run(job: Job, env: Env) -> None:
    source = job.text
    job.chunks = None if source is None else partial(embedded_chunks, job, env, source)


async def _embed(job: Job, env: Env, chunks: list[Chunk]) -> list[EmbeddedChunk]:
    with timed(job, "embed"):
        vectors = await asyncio.to_thread(env.embedder.embed, [c.text for c in chunks])
    return [EmbeddedChunk(c, v) for c, v in zip(chunks, vectors, strict=True)]


async def embedded_chunks(job: Job, env: Env, source: TextSource) -> AsyncIterator[EmbeddedChunk]:
    """Chunks with their vectors, `embedding.batch_size` at a time."""
    settings = env.settings.embedding
    chunker = Chunker(settings.chunk_chars, settings.chunk_overlap)
    pending: list[Chunk] = []
    async for block in source():
        pending.extend(chunker.feed(block))
        while len(pending) >= settings.batch_size:
            for item in await _embed(job, env, pending[:settings.batch_size]):
                yield item
            del pending[:settings.batch_size]
    pending.extend(chunker.finish())
    for start in range(0, len(pending), settings.batch_size):
        for item in await _embed(job, env, pending[start:start + settings.batch_size]):
            yield item
