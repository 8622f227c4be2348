"""The HNSW index over chunk vectors, filled the cheaper of two ways.

Grown row by row, pgvector's HNSW index costs ~1.7 ms of database CPU per chunk on a 2-core
machine; built over every row at once with enough `maintenance_work_mem`, ~0.4 ms
(bench/README.md, "Vector index cost"). So a backlog that is large against what is stored
already (in chunks, from its bytes) is stored without the index, and the index is built once
the backlog has drained;
search scans meanwhile (exact, slower). Any daemon sharing the database may take either step,
one at a time under an advisory lock; both run CONCURRENTLY, so no write or search of another
daemon waits on them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

import asyncpg

from daemon.database import sql
from daemon.errors import DaemonError
from daemon.logs import get_logger
from daemon.retry import describe
from daemon.sessions import Sessions

log = get_logger("dropzone.vectorindex")
INDEX_LOCK = 0x64727669  # "drvi": one daemon at a time drops or builds the index
# grown 1.7 ms/chunk, built 0.38 ms/chunk over all rows: a rebuild pays once the backlog's
# chunks reach 0.38 / (1.7 - 0.38) = 0.29 of those stored
DEFER_SHARE = 0.3
UPKEEP_S = 5.0  # how often a daemon looks at the backlog
PROGRESS_S = 5.0  # how often a build reports how far it is
BUILD_TIMEOUT_S = 7 * 86400.0  # a build lasts as long as it must; Ctrl-C cancels it
Report = Callable[[int], None]  # chunks the build has still to index
Step = Callable[[asyncpg.Connection, asyncpg.Record], Awaitable[None]]


class VectorIndex:
    """Decides, from the backlog, whether the HNSW index should exist now, and makes it so."""

    def __init__(self, sessions: Sessions, report: Report | None = None) -> None:
        self.sessions = sessions
        self.settings = sessions.settings.database
        self.report = report
        self.enabled = sessions.db.vector and self.settings.hnsw_index

    async def run(self) -> None:
        """The daemon's upkeep: one decision every few seconds, for as long as it runs."""
        while self.enabled:
            await self.upkeep()
            await asyncio.sleep(UPKEEP_S)

    async def upkeep(self) -> None:
        """Drop the index before a large backlog; build it when the backlog is small. A
        failure is logged: search works without the index, and the next call tries again."""
        try:
            if self.enabled and self._step(await self._facts()) is not None:
                await self._locked()
        except DaemonError as exc:
            log.warning("search_index_upkeep_failed", error=str(exc))

    def _step(self, facts: asyncpg.Record) -> Step | None:
        """What the facts call for: drop, build, or nothing."""
        coming, least = self._coming(facts), self.settings.defer_index_chunks
        if facts["valid"] and least and coming >= max(least, DEFER_SHARE * facts["chunks"]):
            return self._drop
        if not facts["valid"] and coming <= least // 10:
            return self._build
        return None

    def _coming(self, facts: asyncpg.Record) -> int:
        """The chunks the backlog will make: its bytes over the chunk step (text files make
        about that many; other formats fewer)."""
        embedding = self.sessions.settings.embedding
        return int(facts["bytes"]) // (embedding.chunk_chars - embedding.chunk_overlap)

    async def _facts(self, conn: asyncpg.Connection | None = None) -> asyncpg.Record:
        if conn is None:
            return (await self.sessions.query(sql("search_index_facts")))[0]
        return await conn.fetchrow(sql("search_index_facts"))

    async def _locked(self) -> None:
        """On a connection of its own, if no other daemon is at it: the step the facts call
        for now (another daemon may have taken it since they were read)."""
        try:
            async with self.sessions.db.pool.acquire() as conn:
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", INDEX_LOCK):
                    try:
                        facts = await self._facts(conn)
                        if (step := self._step(facts)) is not None:
                            await step(conn, facts)
                    finally:
                        await conn.execute("SELECT pg_advisory_unlock($1)", INDEX_LOCK)
        except asyncpg.InsufficientPrivilegeError as exc:
            self.enabled = False
            log.warning("search_index_not_managed", reason=describe(exc),
                        note="search works without it, by scanning")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("search_index_upkeep_failed", error=describe(exc))

    async def _drop(self, conn: asyncpg.Connection, facts: asyncpg.Record) -> None:
        await conn.execute(sql("drop_search_index"), timeout=BUILD_TIMEOUT_S)
        log.info("search_index_deferred", files_waiting=facts["files"],
                 chunks_coming=self._coming(facts), chunks_stored=facts["chunks"],
                 note="stored without the HNSW index, which is built once they are in; "
                      "search scans meanwhile")

    async def _build(self, conn: asyncpg.Connection, facts: asyncpg.Record) -> None:
        """Build over every row at once (a leftover of a build that was cut is dropped
        first: IF NOT EXISTS would keep it), reporting progress while it runs."""
        started, chunks = time.monotonic(), int(facts["chunks"])
        log.info("search_index_building", chunks_estimate=chunks)
        if facts["valid"] is False:
            await conn.execute(sql("drop_search_index"), timeout=BUILD_TIMEOUT_S)
        await conn.execute("SELECT set_config('maintenance_work_mem', $1, false)",
                           f"{self.settings.index_build_mb}MB")
        async with self._watch(conn.get_server_pid(), chunks):
            await conn.execute(sql("hnsw_index_concurrently"), timeout=BUILD_TIMEOUT_S)
        log.info("search_index_built", chunks_estimate=chunks,
                 seconds=round(time.monotonic() - started, 1))

    @asynccontextmanager
    async def _watch(self, pid: int, chunks: int) -> AsyncIterator[None]:
        """Log (and report) a build's progress every few seconds while it runs."""
        task = asyncio.create_task(self._progress(pid, chunks))
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    async def _progress(self, pid: int, chunks: int) -> None:
        if self.report is not None:
            self.report(chunks)
        while True:
            await asyncio.sleep(PROGRESS_S)
            with suppress(DaemonError):
                rows = await self.sessions.query(sql("search_index_progress"), pid)
                if rows and rows[0]["total"]:
                    self._progressed(rows[0]["phase"], rows[0]["done"] / rows[0]["total"], chunks)

    def _progressed(self, phase: str, share: float, chunks: int) -> None:
        log.info("search_index_progress", phase=phase, percent=round(100 * share, 1),
                 chunks=chunks)
        if self.report is not None:
            self.report(round(chunks * (1 - share)))
