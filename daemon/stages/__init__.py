"""Stages: one module each, one `run(job, env)` each, each safe to run twice.

A stage does one thing, records its output in the ledger when it is durable, and raises
`TransientError` or `PermanentError`. Stages never import each other: the pipeline composes them,
handing what one produces (a text stream, a chunk stream) to the next through the `Job`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.chunking import Chunk
from daemon.config import Settings, ZoneSettings
from daemon.embedders import Embedder
from daemon.ledger import FileRow, Ledger
from daemon.sessions import Sessions


@dataclass(frozen=True)
class EmbeddedChunk:
    chunk: Chunk
    vector: Any  # one row of embedders.Vectors


TextSource = Callable[[], AsyncIterator[str]]
ChunkSource = Callable[[], AsyncIterator[EmbeddedChunk]]


@dataclass
class Env:
    """What every stage may use: settings, the one session pool, the ledger, the embedder."""

    settings: Settings
    sessions: Sessions
    ledger: Ledger
    embedder: Embedder
    mode: str = "daemon"
    counts: Counter[str] = field(default_factory=Counter)


@dataclass
class Job:
    """One claimed file on its way through the stages."""

    row: FileRow
    zone: ZoneSettings
    metadata: dict[str, Any] = field(default_factory=dict)
    text: TextSource | None = None
    chunks: ChunkSource | None = None

    @property
    def source(self) -> Path:
        return self.zone.path / self.row.fs_path

    @property
    def version(self) -> tuple[int, int]:
        return self.row.size_bytes, self.row.mtime_ns

    @property
    def timings(self) -> dict[str, float]:
        """Milliseconds per stage, kept on the ledger row so a resumed file keeps its history."""
        return self.row.stage_ms


Stage = Callable[[Job, Env], Awaitable[None]]


@contextmanager
def timed(job: Job, stage: str) -> Iterator[None]:
    """Add the time spent inside the block to the job's time for `stage`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = (time.perf_counter() - start) * 1000
        job.timings[stage] = round(job.timings.get(stage, 0.0) + elapsed, 3)
