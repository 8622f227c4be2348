"""The HNSW index: stored without during a large backlog, built over every row after; one
daemon at a time; a build that was cut is replaced. Needs pgvector: on a server without it
(the real[] path) these tests use an embedded Postgres of their own."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from daemon.database import start_embedded, with_database
from daemon.errors import EXIT_INTERRUPTED
from daemon.sessions import Sessions
from daemon.vectorindex import INDEX_LOCK, VectorIndex
from tests.helpers import (
    Daemon,
    make_corpus,
    pgvector_available,
    settings_for,
    stop_embedded,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.db


@pytest.fixture(scope="module")
def vector_server(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An admin URL of a server with pgvector: the test server's if it has it."""
    if asyncio.run(pgvector_available(pg_server)):
        yield pg_server
        return
    folder = tmp_path_factory.mktemp("pgvector")
    yield start_embedded(folder)
    stop_embedded(folder / "pg")


@pytest.fixture
async def sessions(tmp_path: Path, vector_server: str) -> AsyncIterator[Sessions]:
    name = f"dz_vi_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(vector_server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(vector_server, name)
    settings = settings_for(tmp_path, {"url": url, "defer_index_chunks": 10})
    try:
        async with Sessions(settings) as opened:
            assert opened.db.vector
            yield opened
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def index_state(sessions: Sessions) -> bool | None:
    """None: no index; False: invalid (being built, or cut); True: in use."""
    return await sessions.fetchval(  # type: ignore[no-any-return]
        "SELECT indisvalid FROM pg_index "
        "WHERE indexrelid = to_regclass('document_embeddings_hnsw')")


async def add_documents(sessions: Sessions, count: int, chunks: int = 3) -> None:
    await sessions.execute(
        "INSERT INTO documents (zone, doc_type, source_path, object_url, sha256, size_bytes) "
        "SELECT 'docs', 'document', 'f' || i, 'file:///x/' || i, md5(i::text) || md5(i::text), 1 "
        "FROM generate_series(1, $1) AS i", count)
    await sessions.execute(
        "INSERT INTO document_embeddings (document_id, chunk_index, s3_key, doc_type, content, "
        "char_start, embedding, model) "
        "SELECT d.id, c, 'k', 'document', 'text', 0, "
        "       (SELECT array_agg(random())::real[] FROM generate_series(1, 384) "
        "         WHERE c >= 0)::vector, 'hashing' "
        "FROM documents d, generate_series(0, $1 - 1) AS c", chunks)


async def add_backlog(sessions: Sessions, files: int) -> None:
    """Files of 1,000 bytes: 1.1 chunks each at the default chunk step (900 characters)."""
    await sessions.execute(
        "INSERT INTO dz_files (zone, rel_path, size_bytes, mtime_ns) "
        "SELECT 'docs', 'new/' || i, 1000, 1 FROM generate_series(1, $1) AS i", files)


async def test_a_large_backlog_goes_in_without_the_index_which_is_built_after(
        sessions: Sessions) -> None:
    assert await index_state(sessions) is True  # created on the empty table at start
    await add_documents(sessions, 5)
    await add_backlog(sessions, 20)
    index = VectorIndex(sessions)
    await index.upkeep()
    assert await index_state(sessions) is None
    await sessions.execute("UPDATE dz_files SET stage = 'track' WHERE id % 2 = 0")
    await index.upkeep()  # 11 chunks to come: more than a tenth of defer_index_chunks
    assert await index_state(sessions) is None
    await sessions.execute("UPDATE dz_files SET stage = 'done'")
    await index.upkeep()
    assert await index_state(sessions) is True

    async def plan(conn: asyncpg.Connection) -> str:  # 15 rows: only forced off a scan
        await conn.execute("SET LOCAL enable_seqscan = off")
        rows = await conn.fetch(
            "EXPLAIN SELECT id FROM document_embeddings "
            "ORDER BY embedding <=> (SELECT embedding FROM document_embeddings LIMIT 1) LIMIT 5")
        return "\n".join(row[0] for row in rows)
    assert "document_embeddings_hnsw" in await sessions.transaction(plan)


async def test_a_backlog_small_against_what_is_stored_keeps_the_index(
        sessions: Sessions) -> None:
    """22 chunks to come against 100 stored: growing the index costs less than building
    it over all 122."""
    await add_documents(sessions, 100, chunks=1)
    await add_backlog(sessions, 20)
    await VectorIndex(sessions).upkeep()
    assert await index_state(sessions) is True


async def test_another_daemon_at_the_index_is_left_to_it(sessions: Sessions) -> None:
    await add_backlog(sessions, 20)
    other = await sessions.db.pool.acquire()
    try:
        await other.execute("SELECT pg_advisory_lock($1)", INDEX_LOCK)
        await VectorIndex(sessions).upkeep()
        assert await index_state(sessions) is True
        await other.execute("SELECT pg_advisory_unlock($1)", INDEX_LOCK)
    finally:
        await sessions.db.pool.release(other)
    await VectorIndex(sessions).upkeep()
    assert await index_state(sessions) is None


async def test_a_build_that_was_cut_is_replaced(sessions: Sessions) -> None:
    """A build cut short (a crash, Ctrl-C) leaves an invalid index, which IF NOT EXISTS
    alone would keep for good (a superuser marks it so here)."""
    await add_documents(sessions, 5)
    await sessions.execute("UPDATE pg_index SET indisvalid = false "
                           "WHERE indexrelid = 'document_embeddings_hnsw'::regclass")
    assert await index_state(sessions) is False
    await VectorIndex(sessions).upkeep()
    assert await index_state(sessions) is True


async def test_turned_off_it_is_never_touched(tmp_path: Path, sessions: Sessions) -> None:
    await add_backlog(sessions, 20)
    off = settings_for(tmp_path / "off", {"url": sessions.settings.database.url,
                                          "hnsw_index": False, "defer_index_chunks": 10})
    async with Sessions(off) as other:
        await VectorIndex(other).upkeep()
    assert await index_state(sessions) is True


async def test_a_build_outlives_the_cleanup_of_lost_sessions(
        tmp_path: Path, sessions: Sessions) -> None:
    """Postgres builds the index with parallel workers that carry our sessions' tag but are
    none of the pool's connections: ending 'lost' sessions must spare them (it cut a 10,000-
    file bench's build short at 72 %)."""
    await add_documents(sessions, 1, chunks=1)
    await sessions.execute("DROP INDEX document_embeddings_hnsw")
    await sessions.execute(  # 20,000 rows in a few seconds: varied, not random, vectors
        "INSERT INTO document_embeddings (document_id, chunk_index, s3_key, doc_type, "
        "content, char_start, embedding, model) "
        "SELECT d.id, c, 'k', 'document', repeat('x', 900), 0, "
        "       array_fill(sin(c)::real, ARRAY[383]) || (c::real / 20000), 'hashing' "
        "FROM documents d, generate_series(1, 20000) AS c")
    quick = settings_for(tmp_path / "quick", {"url": sessions.settings.database.url,
                                              "command_timeout_s": 0.5, "connect_timeout_s": 0.5})
    async with Sessions(quick) as other:
        build = asyncio.create_task(VectorIndex(other).upkeep())
        seen = 0
        while not build.done():
            seen = max(seen, await workers_of_a_build(sessions))
            assert await other.db.end_lost_sessions() == 0
            await asyncio.sleep(0.3)
        await build
    assert seen, "no parallel worker: the test proves nothing here"
    assert await index_state(sessions) is True


async def workers_of_a_build(sessions: Sessions) -> int:
    return int(await sessions.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'parallel worker'"))


@pytest.fixture
async def vector_url(vector_server: str) -> AsyncIterator[str]:
    """A fresh database on the pgvector server, for a daemon of its own."""
    name = f"dz_vi_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(vector_server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(vector_server, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_ctrl_c_cuts_the_build_short_and_the_next_run_builds_it(
        tmp_path: Path, vector_url: str) -> None:
    """A `--once` waiting on its index build (held here: CREATE INDEX CONCURRENTLY waits for
    every older snapshot) stops promptly on SIGINT, its files finished; the next run replaces
    the cut build."""
    path = write_config(tmp_path, database={"url": vector_url, "defer_index_chunks": 10})
    make_corpus(tmp_path / "zones" / "docs", 30)
    holder = await asyncpg.connect(vector_url)
    await holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
    with Daemon(path, "--once") as daemon:
        daemon.wait_for("search_index_building", 180)
        wait_until(lambda: len(daemon.named("file_processed")) == 30, 60, "files finished")
        daemon.signal(signal.SIGINT)
        assert daemon.wait(30) == EXIT_INTERRUPTED, daemon.output()[-2000:]
    assert daemon.named("search_index_not_built")
    await holder.execute("ROLLBACK")
    await holder.close()
    again = Daemon(path, "--once")
    assert again.run() == 0, again.output()[-2000:]
    assert again.named("search_index_built")
    assert not list((tmp_path / "zones" / "docs").rglob("*.txt")), "every file finished"
