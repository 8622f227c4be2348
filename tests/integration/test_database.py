"""The schema: created at start, by any number of daemons at once, vector or real[]."""

from __future__ import annotations

import asyncio
import random
import string
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from daemon import database
from daemon.database import SCHEMA_VERSION, Database
from daemon.errors import ConfigError
from tests.helpers import pgvector_available, proxy_for, settings_for, via_proxy


async def test_schema_uses_pgvector_exactly_when_the_server_has_it(
        tmp_path: Path, database_url: str) -> None:
    """The embedding column is vector(dim) with pgvector, real[] without."""
    settings = settings_for(tmp_path, database_url)
    async with Database(settings) as db:
        kind = await db.pool.fetchval(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'document_embeddings'::regclass AND attname = 'embedding'")
        tables = {r["tablename"] for r in await db.pool.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"documents", "document_embeddings", "dz_files", "dz_contents"} <= tables
    if await pgvector_available(database_url):
        assert (db.vector, kind) == (True, "vector(384)")
    else:
        assert (db.vector, kind) == (False, "real[]")


async def test_many_daemons_can_create_the_schema_at_once(
        tmp_path: Path, database_url: str) -> None:
    """Four concurrent starts on an empty database all succeed (advisory lock)."""
    settings = settings_for(tmp_path, database_url)

    async def start() -> bool:
        async with Database(settings) as db:
            return bool(await db.pool.fetchval("SELECT max(version) = $1 FROM dz_schema",
                                               SCHEMA_VERSION))

    assert await asyncio.gather(*(start() for _ in range(4))) == [True] * 4


async def test_a_different_dim_is_refused_where_the_column_has_one(
        tmp_path: Path, database_url: str) -> None:
    """vector(384) cannot take 128-d vectors: refused at start; real[] has no dim to clash."""
    async with Database(settings_for(tmp_path, database_url)) as db:
        native = db.vector
    other = settings_for(tmp_path, database_url, embedding={"dim": 128})
    if native:
        with pytest.raises(ConfigError, match=r"embedding.dim: 128, but the database stores"):
            async with Database(other):
                pass
    else:
        async with Database(other) as db:
            assert db.vector is False


async def test_embedded_postgres_has_pgvector(tmp_path: Path) -> None:
    """`database.url: embedded` starts pgserver under the state dir, with pgvector."""
    settings = settings_for(tmp_path, "embedded")
    async with Database(settings) as db:
        assert db.vector is True
        assert await db.pool.fetchval("SELECT current_database()") == "dropzone"
    assert (tmp_path / "var" / "pg" / "PG_VERSION").exists()


async def test_a_transaction_left_idle_is_ended_and_its_locks_freed(
        tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pooled connection that freezes mid-transaction (its client gone quiet, a NAT that
    forgot it) does not hold its row locks for ever: past the deadline the server ends it."""
    monkeypatch.setattr(database, "IDLE_FLOOR_S", 0.5)
    settings = settings_for(tmp_path, {"url": database_url, "command_timeout_s": 0.5})
    async with Database(settings) as db:
        await db.pool.execute("SELECT 1")  # released once: the pool's RESET ALL keeps it
        frozen = await db.pool.acquire()
        await frozen.execute("BEGIN")
        await frozen.execute("SELECT * FROM dz_schema FOR UPDATE")
        await asyncio.sleep(1.5)  # idle in the transaction, past the deadline
        async with db.pool.acquire() as other, other.transaction():
            await other.execute("SET lock_timeout = 2000")
            await other.execute("SELECT * FROM dz_schema FOR UPDATE")  # the lock is free
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
            await frozen.execute("SELECT 1")
        await db.pool.release(frozen)


async def a_document(db: Database) -> int:
    return int(await db.pool.fetchval(
        "INSERT INTO documents (zone, doc_type, source_path, object_url, sha256, size_bytes) "
        "VALUES ('z', 'd', 'a.txt', 'file:///a', repeat('0', 64), 1) RETURNING id"))


def chunk_rows(doc: int, count: int, dim: int = 384) -> list[tuple[object, ...]]:
    return [(doc, i, "k", "d", f"chunk {i}", 0, [0.5] * dim, "m") for i in range(count)]


async def test_a_chunk_row_is_kept_whole_in_its_page(tmp_path: Path, database_url: str) -> None:
    """A 384-d vector and a 1,000-char chunk stay inline: nothing goes to the TOAST table
    (a second insert per chunk, read back on every search), on pgvector and on real[]."""
    async with Database(settings_for(tmp_path, database_url)) as db, \
            db.pool.acquire() as conn:
        doc = await a_document(db)
        rng = random.Random(7)  # text and vectors that do not compress, as real ones
        rows = [(doc, i, "k", "d", "".join(rng.choices(string.ascii_letters, k=1000)), 0,
                 [rng.random() for _ in range(384)], "m") for i in range(50)]
        assert await db.copy_embeddings(conn, rows) == 50
        toast = await conn.fetchval(
            "SELECT pg_relation_size(reltoastrelid) FROM pg_class "
            "WHERE oid = 'document_embeddings'::regclass")
        assert toast == 0


async def test_a_copy_to_a_server_that_stops_answering_times_out(
        tmp_path: Path, database_url: str) -> None:
    """The chunk COPY has no overall deadline (a large file's lasts as long as its
    embedding), but each wait on the server gets command_timeout_s, like any query."""
    proxy = proxy_for(database_url)
    try:
        url = via_proxy(database_url, proxy)
        settings = settings_for(tmp_path, {"url": url, "command_timeout_s": 0.5})
        async with Database(settings) as db, db.pool.acquire() as conn:
            rows = chunk_rows(await a_document(db), 2000)  # several pieces of the stream
            proxy.set("blackhole")
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(db.copy_embeddings(conn, rows), 30)
            assert time.monotonic() - started < 15, "the COPY waited on a silent server"
    finally:
        proxy.stop()


async def test_a_copy_whose_rows_come_slowly_is_not_cut_short(
        tmp_path: Path, database_url: str) -> None:
    """Waiting on our own rows (embedding a large file) is not the server's delay."""
    settings = settings_for(tmp_path, {"url": database_url, "command_timeout_s": 0.3})
    async with Database(settings) as db, db.pool.acquire() as conn:
        rows = chunk_rows(await a_document(db), 3)

        async def slowly() -> AsyncIterator[tuple[object, ...]]:
            for row in rows:
                await asyncio.sleep(0.6)
                yield row
        assert await db.copy_embeddings(conn, slowly()) == 3


async def test_sessions_whose_connection_was_dropped_are_ended_and_their_locks_freed(
        tmp_path: Path, database_url: str) -> None:
    """A connection that froze mid-COPY is dropped on our side, but its server end lives on
    (the path between still holds it), holding its locks: end_lost_sessions ends it, and
    spares every connection the pool still holds."""
    proxy = proxy_for(database_url)
    try:
        settings = settings_for(tmp_path, {"url": via_proxy(database_url, proxy), "pool_min": 0,
                                           "command_timeout_s": 0.5, "connect_timeout_s": 0.5})
        async with Database(settings) as db:
            await db.pool.execute("SELECT 1")  # released once: the pool's RESET ALL keeps the tag
            async with db.pool.acquire() as frozen:
                await frozen.execute("BEGIN")
                await frozen.execute("SELECT * FROM dz_schema FOR UPDATE")
                proxy.set("blackhole")
                with pytest.raises(TimeoutError):  # a COPY that never gets its answer
                    await db.copy_embeddings(frozen, chunk_rows(1, 10))
                frozen.terminate()
            proxy.set("pass")
            async with db.pool.acquire() as kept:
                await asyncio.sleep(1.2)  # older than a connection still being set up
                assert await db.end_lost_sessions() == 1
                assert await kept.fetchval("SELECT 1") == 1
            other = await asyncpg.connect(database_url)
            try:
                await other.execute("SET lock_timeout = 2000")
                async with other.transaction():
                    await other.execute("SELECT * FROM dz_schema FOR UPDATE")  # the lock is free
            finally:
                await other.close()
            assert await db.end_lost_sessions() == 0
    finally:
        proxy.stop()
