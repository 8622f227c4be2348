"""Where chunking and embedding run: in worker processes, so the daemon's own process keeps
its one core (its GIL) for I/O, or in a thread when `pipeline.cpu_workers` is 0.

Starting the workers (and the fork server they come from) takes about half a second; until
they answer, work runs in a thread, so nothing waits for them. They live and die with the
daemon (`daemon.workers`). A worker that dies (killed, out of memory) breaks the pool: the call
fails as a transient error and a new pool is started, so the batch is retried, not lost.

Chunks come back from the workers as character spans of the texts sent, not as text: the
daemon already holds the texts, so pickling them back would only double the traffic.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from daemon import workers
from daemon.chunking import Chunk, chunk_text
from daemon.config import EmbeddingSettings
from daemon.embedders import Embedder, Vectors, create
from daemon.errors import TransientError

T = TypeVar("T")
Chunked = list[tuple[list[Chunk], Vectors]]
Spans = npt.NDArray[np.int64]  # (start, end) of each chunk in its text, one row per chunk
Spanned = list[tuple[Spans, Vectors]]
_embedder: Embedder | None = None  # the worker process's own


def chunk_and_embed(embedder: Embedder, texts: Sequence[str], size: int,
                    overlap: int) -> Chunked:
    """Each text's chunks with their vectors; all chunks embedded in one call."""
    per_text = [chunk_text(text, size, overlap) for text in texts]
    vectors = embedder.embed([chunk.text for chunks in per_text for chunk in chunks])
    out, start = [], 0
    for chunks in per_text:
        out.append((chunks, vectors[start:start + len(chunks)]))
        start += len(chunks)
    return out


def chunk_spans_and_embed(embedder: Embedder, texts: Sequence[str], size: int,
                          overlap: int) -> Spanned:
    """`chunk_and_embed`, each chunk given by its span in its text: what the workers return."""
    return [(_spans(chunks), vectors)
            for chunks, vectors in chunk_and_embed(embedder, texts, size, overlap)]


def _spans(chunks: list[Chunk]) -> Spans:
    spans = [(chunk.start, chunk.start + len(chunk.text)) for chunk in chunks]
    return np.array(spans, dtype=np.int64).reshape(len(spans), 2)


def with_texts(texts: Sequence[str], spanned: Spanned) -> Chunked:
    """The chunks back from their spans (a chunk's text is its span of the text, stripped
    already: see `Chunker._emit`)."""
    return [([Chunk(index, start, text[start:end])
              for index, (start, end) in enumerate(spans.tolist())], vectors)
            for text, (spans, vectors) in zip(texts, spanned, strict=True)]


def _init_worker(settings: EmbeddingSettings, daemon_pid: int, log_state: Any) -> None:
    global _embedder
    workers.setup(daemon_pid, log_state)
    _embedder = create(settings)


def _in_worker(fn: Callable[..., T], *args: Any) -> T:
    assert _embedder is not None, "the pool initialiser creates it"
    return fn(_embedder, *args)


def _embed(embedder: Embedder, texts: Sequence[str]) -> Vectors:
    return embedder.embed(texts)


def _ready(embedder: Embedder) -> str:
    return embedder.name


class EmbedPool:
    """The embedder behind an async interface, its work in `processes` worker processes."""

    def __init__(self, embedder: Embedder, settings: EmbeddingSettings, processes: int) -> None:
        self.embedder = embedder
        self.name, self.dim = embedder.name, embedder.dim
        self.settings = settings
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._ready: Future[str] | None = None
        self._starter: threading.Thread | None = None

    def start(self) -> None:
        """Start the workers from a thread (no-op with 0 processes): the first start also
        starts the fork server, and asking it for a process waits for its imports."""
        if self.processes > 0:
            self._starter = threading.Thread(target=self._start, name="embed-pool-start")
            self._starter.start()

    def _start(self) -> None:
        pool = ProcessPoolExecutor(self.processes, mp_context=workers.context(),
                                   initializer=_init_worker,
                                   initargs=(self.settings, *workers.parent_state()))
        self._pool = pool  # before `_ready`: a done `_ready` always comes with its pool
        self._ready = pool.submit(_in_worker, _ready)

    def close(self) -> None:
        if self._starter is not None:
            self._starter.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def chunk_and_embed(self, texts: Sequence[str]) -> Chunked:
        size, overlap, texts = self.settings.chunk_chars, self.settings.chunk_overlap, list(texts)
        return with_texts(texts, await self._run(chunk_spans_and_embed, texts, size, overlap))

    async def embed(self, texts: Sequence[str]) -> Vectors:
        return await self._run(_embed, list(texts))

    def _workers(self) -> ProcessPoolExecutor | None:
        """The pool once its workers have answered; None means: work in a thread."""
        ready = self._ready
        if ready is None or not ready.done() or ready.cancelled() or ready.exception():
            return None
        return self._pool

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        pool = self._workers()
        if pool is None:
            return await asyncio.to_thread(fn, self.embedder, *args)
        try:
            return await asyncio.wrap_future(pool.submit(_in_worker, fn, *args))
        except BrokenProcessPool as exc:
            self._restart(pool)
            raise TransientError(f"an embedding worker died ({exc}); started new ones") from exc

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        if self._pool is broken:
            broken.shutdown(wait=False, cancel_futures=True)
            self.start()
