"""Embed: chunk the text and embed the chunks, in the embedding workers (or a thread).

The chunks of all small files of a batch are embedded in one call. A large file's chunks are
produced lazily, batch by batch, as the store stage consumes them, so it is never held in
memory whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

from daemon.chunking import Chunk, Chunker
from daemon.stages import EmbeddedChunk, Env, Job, TextSource, timed


async def run(jobs: list[Job], env: Env) -> None:
    """Chunk and embed every small file's text in one call; give large files a stream."""
    small = [job for job in jobs if job.text is not None]
    if small:
        with timed(small, "embed"):
            results = await env.embedder.chunk_and_embed([job.text or "" for job in small])
        for job, (chunks, vectors) in zip(small, results, strict=True):
            job.chunks = [EmbeddedChunk(c, v) for c, v in zip(chunks, vectors, strict=True)]
    for job in jobs:
        if job.text_stream is not None:
            job.chunk_stream = partial(embedded_chunks, job, env, job.text_stream)


async def _embed(job: Job, env: Env, chunks: list[Chunk]) -> list[EmbeddedChunk]:
    with timed([job], "embed"):
        vectors = await env.embedder.embed([c.text for c in chunks])
    return [EmbeddedChunk(c, v) for c, v in zip(chunks, vectors, strict=True)]


async def embedded_chunks(job: Job, env: Env, source: TextSource) -> AsyncIterator[EmbeddedChunk]:
    """A large file's chunks with their vectors, `embedding.batch_size` at a time."""
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
