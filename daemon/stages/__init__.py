"""Stages: one module each, one `run(job, env)` each, each safe to run twice.

A stage does one thing, records its output in the ledger when it is durable, and raises
`TransientError` or `PermanentError`. Stages never import each other: the pipeline composes them,
handing what one produces (a text stream, a chunk stream) to the next through the `Job`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from daemon.chunking import Chunk
from daemon.config import Settings, ZoneSettings
from daemon.embedders.pool import EmbedPool
from daemon.errors import LeaseLost
from daemon.files import SourceFile
from daemon.ledger import FileRow, Ledger
from daemon.sessions import Sessions

if TYPE_CHECKING:  # for the type only: commands that serve no metrics never import them
    from daemon.metrics import Metrics


@dataclass(frozen=True)
class EmbeddedChunk:
    chunk: Chunk
    vector: Any  # one row of embedders.Vectors


TextSource = Callable[[], AsyncIterator[str]]
ChunkSource = Callable[[], AsyncIterator[EmbeddedChunk]]


@dataclass
class Env:
    """What every stage may use: settings, the one session pool, the ledger, the embedder
    (which runs in its worker processes)."""

    settings: Settings
    sessions: Sessions
    ledger: Ledger
    embedder: EmbedPool
    mode: str = "daemon"
    counts: Counter[str] = field(default_factory=Counter)
    stored: asyncio.Event = field(default_factory=asyncio.Event)  # set once a batch is stored
    metrics: Metrics | None = None  # the Prometheus counters, when metrics.listen is set
    retired: dict[str, ZoneSettings] = field(default_factory=dict)  # zones a reload removed

    def zone(self, name: str) -> ZoneSettings:
        """A zone's settings: its current ones, or, for the files still on their way from a
        zone a reload removed, the ones they started with."""
        for zone in self.settings.zones:
            if zone.name == name:
                return zone
        return self.retired[name]


@dataclass
class Job:
    """One claimed file on its way through the stages. Stages work on lists of jobs (a batch);
    a job that fails on its own gets `error` set and drops out of the batch."""

    row: FileRow
    zone: ZoneSettings
    metadata: dict[str, Any] = field(default_factory=dict)
    body: bytes | None = None  # the whole file, read once by `hash`, when it is small
    text: str | None = None  # the whole text of a small file
    text_stream: TextSource | None = None  # or, for a large file, a stream of blocks
    chunks: list[EmbeddedChunk] | None = None  # a small file's chunks and vectors
    chunk_stream: ChunkSource | None = None  # or a large file's, as a stream
    error: BaseException | None = None
    handle: BinaryIO | None = None  # a large file, opened once, read by position by each stage

    @property
    def source(self) -> Path:
        return self.zone.path / self.row.fs_path

    @property
    def file(self) -> SourceFile:
        return SourceFile(self.zone.path, self.row.fs_path, self.version)

    def opened(self) -> BinaryIO:
        """The file version, opened once (beneath its zone, no link followed) and kept open
        until the job ends, so the bytes uploaded and read for text are the bytes hashed,
        even if a file or link is swapped in at its path meanwhile."""
        if self.handle is None:
            self.handle = self.file.open()
        return self.handle

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    @property
    def version(self) -> tuple[int, int]:
        return self.row.size_bytes, self.row.mtime_ns

    @property
    def timings(self) -> dict[str, float]:
        """Milliseconds per stage, kept on the ledger row so a resumed file keeps its history."""
        return self.row.stage_ms


Stage = Callable[[list[Job], Env], Awaitable[None]]


def pending(jobs: list[Job]) -> list[Job]:
    """The jobs of a batch that have not failed."""
    return [job for job in jobs if job.error is None]


@contextmanager
def timed(jobs: list[Job], stage: str) -> Iterator[None]:
    """Add the time spent inside the block to each job's time for `stage`, shared out evenly
    (a batch of 32 files uploaded in 40 ms costs each of them 1.25 ms)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        share = (time.perf_counter() - start) * 1000 / max(1, len(jobs))
        for job in jobs:
            job.timings[stage] = round(job.timings.get(stage, 0.0) + share, 3)


async def each(jobs: list[Job], work: Callable[[Job], Awaitable[None]]) -> None:
    """Run `work` for every job at once; a failure is kept on its job, not raised."""
    async def one(job: Job) -> None:
        try:
            await work(job)
        except Exception as exc:
            job.error = exc
    await asyncio.gather(*(one(job) for job in jobs))


async def advance(jobs: list[Job], env: Env, stage: str | Callable[[Job], str],
                  conn: Any = None) -> None:
    """Move every pending job on to its next stage in one ledger write; a job whose claim was
    taken meanwhile gets LeaseLost."""
    moves = [(job.row, stage(job) if callable(stage) else stage) for job in pending(jobs)]
    lost = await env.ledger.advance_many(moves, conn)
    for job in jobs:
        if job.row.id in lost:
            job.error = LeaseLost(f"file {job.row.id} was claimed by another worker")
