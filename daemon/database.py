"""Postgres: the embedded server, the one asyncpg pool, the schema and the named queries.

`database.url: embedded` starts pgserver (Postgres 16 with pgvector) under the state dir; a
`postgresql://` URL uses that server. The password never sits in the URL in the config: it comes
from `database.password_file`, `$CREDENTIALS_DIRECTORY/db_password`, or libpq's own
`PGPASSWORD` / `.pgpass`, all of which asyncpg reads.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shutil
import warnings
from collections.abc import AsyncIterable, Iterable
from contextlib import AbstractAsyncContextManager
from functools import cache
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg

from daemon import failpoints, pgcopy
from daemon.config import DatabaseSettings, Settings
from daemon.errors import ConfigError, DependencyError
from daemon.files import exclusive
from daemon.identity import alive
from daemon.logs import credential, get_logger, read_secret
from daemon.retry import describe, is_transient

log = get_logger("dropzone.database")
SCHEMA_LOCK = 0x64726F70  # "drop": serialises schema creation across daemons
SCHEMA_VERSION = 8  # schema.sql's version; bump it with every change to the schema
EMBEDDED_DB = "dropzone"
EMBEDDING_COLUMNS = ("document_id", "chunk_index", "s3_key", "doc_type", "content", "char_start",
                     "embedding", "model")
# a large file's COPY lasts as long as its embedding: asyncpg's own deadline is only a backstop;
# each wait on the server is bounded by command_timeout_s, each wait on our rows by the stage's
COPY_TIMEOUT_S = 7 * 86400.0
IDLE_FLOOR_S = 10.0  # never end a transaction idle for less (a busy event loop may pause)
_NAME = re.compile(r"^-- name: (\w+)\s*$", re.M)


@cache
def load_queries() -> dict[str, str]:
    """Named queries from `sql/queries.sql` (`-- name: x` starts a query)."""
    text = resources.files("daemon.sql").joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)[1:]
    return {name: body.strip().rstrip(";") for name, body in zip(parts[::2], parts[1::2],
                                                                  strict=True)}


def sql(name: str) -> str:
    return load_queries()[name]


def schema_sql(embedding_type: str) -> str:
    text = resources.files("daemon.sql").joinpath("schema.sql").read_text(encoding="utf-8")
    return text.replace("{embedding_type}", embedding_type)


def _prune_dead_handles(pgdata: Path) -> None:
    """pgserver counts users in a pid list and never forgets a killed one; forget them here."""
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    living = [pid for pid in pids if alive(int(pid))]
    if living != pids:
        handles.write_text(json.dumps(living))


def start_embedded(state_dir: Path) -> str:
    """Start (or join) the embedded server; returns its URI. Blocking: run it in a thread.

    A first start killed half-way leaves a cluster that can never start; `pg.ready`, written
    once the server first answered, tells such a folder (holding no data yet) from a real one.
    """
    pgdata, ready = state_dir / "pg", state_dir / "pg.ready"
    with exclusive(state_dir / "pg.lock"):
        if pgdata.exists() and not ready.exists():
            log.warning("embedded_postgres_reinit", reason="an earlier first start was cut short")
            shutil.rmtree(pgdata)
        _prune_dead_handles(pgdata)
        with warnings.catch_warnings():  # "XDG_RUNTIME_DIR is not set": its fallback is fine
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            from pgserver.postgres_server import get_server  # only the embedded default uses it

            server = get_server(pgdata, cleanup_mode="stop")
        failpoints.hit("embedded_pg_init")
        ready.touch()
    return str(server.get_uri())


async def _ensure_database(admin_uri: str, name: str) -> None:
    conn = await asyncpg.connect(admin_uri)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.DuplicateDatabaseError:
        pass
    finally:
        await conn.close()


async def connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """asyncpg.connect, where failing to reach the server (a socket file missing during a
    restart, a refused port) is a ConnectionError, never mistaken for a file error."""
    try:
        return await asyncpg.connect(*args, **kwargs)
    except OSError as exc:
        if isinstance(exc, ConnectionError):
            raise
        raise ConnectionError(f"cannot reach postgres: {exc}") from exc


def with_database(uri: str, name: str) -> str:
    """Swap the database in a pgserver URI (`postgresql://postgres:@/postgres?host=...`)."""
    head, _, tail = uri.partition("?")
    return f"{head.rsplit('/', 1)[0]}/{name}" + (f"?{tail}" if tail else "")


def read_password(settings: DatabaseSettings) -> str | None:
    """The database password from a file, if one is configured or handed over by systemd."""
    path = settings.password_file or credential("db_password")
    return read_secret(path) if path is not None else None


class Database(AbstractAsyncContextManager["Database"]):
    """The asyncpg pool, opened once with the schema in place. Every query on it has a deadline
    (`database.command_timeout_s`): past it asyncpg cancels the query (or, if the server does
    not even answer that, drops the connection) and raises TimeoutError, a transient error."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self.vector = False
        self.tag = f"dropzone {secrets.token_hex(6)}"  # application_name of our sessions
        self.backends: set[int] = set()  # server pids of the connections the pool holds

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database is not open")
        return self._pool

    async def __aenter__(self) -> Database:
        uri = await self._uri()
        password = read_password(self.settings.database)
        try:
            await self._prepare(uri, password)
            self._pool = await self._create_pool(uri, password)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise DependencyError(f"postgres: {describe(exc)}") from exc
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await _close(pool, self.settings.database.command_timeout_s)

    async def _uri(self) -> str:
        url = self.settings.database.url
        if url != "embedded":
            return url
        try:
            admin = await asyncio.to_thread(start_embedded, self.settings.state_dir)
            await _ensure_database(admin, EMBEDDED_DB)
        except Exception as exc:
            raise DependencyError(f"embedded postgres: {describe(exc)}") from exc
        return with_database(admin, EMBEDDED_DB)

    async def _prepare(self, uri: str, password: str | None) -> None:
        """Create the schema if it is missing or older, under an advisory lock; a schema already
        current is only checked, so a role without DDL rights can run the daemon."""
        conn = await asyncpg.connect(uri, password=password,
                                     timeout=self.settings.database.connect_timeout_s)
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", SCHEMA_LOCK)
            current = await _schema_version(conn) == SCHEMA_VERSION
            self.vector = await _embedding_type(conn, self.settings.embedding.dim, current)
            if not current:
                kind = f"vector({self.settings.embedding.dim})" if self.vector else "real[]"
                await conn.execute(schema_sql(kind))
            if self.vector and self.settings.database.hnsw_index:
                await _create_index(conn)
        finally:
            await conn.close()

    async def _create_pool(self, uri: str, password: str | None) -> asyncpg.Pool:
        db = self.settings.database
        return await asyncpg.create_pool(
            uri, password=password, min_size=db.pool_min, max_size=db.pool_max,
            timeout=db.connect_timeout_s, command_timeout=db.command_timeout_s,
            init=self._init_connection, connect=connect, max_inactive_connection_lifetime=300,
            server_settings=self._session_settings())

    def _session_settings(self) -> dict[str, str]:
        """Sent at connection start, so they are the session's defaults: the pool's RESET ALL
        on every release keeps them."""
        idle_ms = int(max(self.settings.database.command_timeout_s, IDLE_FLOOR_S) * 1000)
        return {"application_name": self.tag, "idle_in_transaction_session_timeout": str(idle_ms)}

    async def copy_embeddings(self, conn: asyncpg.Connection,
                              rows: Iterable[tuple[Any, ...]] | AsyncIterable[tuple[Any, ...]]
                              ) -> int:
        """Binary COPY of EMBEDDING_COLUMNS rows (encoded by daemon.pgcopy); the row count.
        The stream lasts as long as its rows take to come, but a server that stops answering
        (or reading) is given command_timeout_s, as any query is: then TimeoutError."""
        counted, loop = [0], asyncio.get_running_loop()
        limit = self.settings.database.command_timeout_s
        async with asyncio.timeout(loop.time() + limit) as deadline:
            def turn(server: bool) -> None:
                deadline.reschedule(loop.time() + limit if server else None)
            await conn.copy_to_table(
                "document_embeddings", source=pgcopy.stream(rows, self.vector, counted, turn),
                columns=EMBEDDING_COLUMNS, format="binary", timeout=COPY_TIMEOUT_S)
        return counted[0]

    async def end_lost_sessions(self) -> int:
        """End the server side of connections the pool dropped (after a timeout on a connection
        that froze): such a session may sit in a COPY or a transaction holding row locks that
        every retry then waits on. Found by our tag; the ones the pool holds are spared."""
        db = self.settings.database
        return int(await self.pool.fetchval(sql("end_lost_sessions"), self.tag,
                                            list(self.backends),
                                            db.connect_timeout_s + db.command_timeout_s))

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        """Record the session's server pid while the pool holds it (see end_lost_sessions)."""
        pid = conn.get_server_pid()
        self.backends.add(pid)
        conn.add_termination_listener(lambda _: self.backends.discard(pid))
        if self.vector:
            from pgvector.asyncpg import register_vector

            await register_vector(conn)


async def _close(pool: asyncpg.Pool, wait_s: float) -> None:
    """Close the pool gracefully if the server answers, else drop its connections: a connection
    that froze must not hold up (or fail) the daemon's exit."""
    try:
        await asyncio.wait_for(pool.close(), wait_s)
    except Exception as exc:  # TimeoutError, or the connection's own error
        log.warning("postgres_connections_dropped", reason=describe(exc))
        pool.terminate()


async def _create_index(conn: asyncpg.Connection) -> None:
    """The HNSW index on a table without rows, where it costs nothing; over rows it is built
    by daemon.vectorindex once the backlog is small. A role without the right to create it
    goes on without (search then scans, slower but right)."""
    if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM document_embeddings)"):
        return
    try:
        await conn.execute(sql("hnsw_index"))
    except asyncpg.InsufficientPrivilegeError as exc:
        log.warning("hnsw_index_not_created", reason=describe(exc))


async def _column_type(conn: asyncpg.Connection) -> str | None:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass('document_embeddings') AND attname = 'embedding'")


async def _schema_version(conn: asyncpg.Connection) -> int | None:
    if await conn.fetchval("SELECT to_regclass('dz_schema')") is None:
        return None
    return await conn.fetchval("SELECT max(version) FROM dz_schema")  # type: ignore[no-any-return]


async def _embedding_type(conn: asyncpg.Connection, dim: int, current: bool) -> bool:
    """True for pgvector. An existing table decides; else pgvector when it can be installed."""
    existing = await _column_type(conn)
    if existing is None:
        return False if current else await _try_vector_extension(conn)
    if existing.startswith("vector") and existing != f"vector({dim})":
        raise ConfigError([f"embedding.dim: {dim}, but the database stores {existing}; "
                           "keep the dim or use a new database"])
    return existing.startswith("vector")


async def _try_vector_extension(conn: asyncpg.Connection) -> bool:
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except asyncpg.PostgresError as exc:
        if is_transient(exc):
            raise
        log.info("pgvector_unavailable", reason=describe(exc), fallback="real[]")
        return False
    return True


async def server_facts(pool: asyncpg.Pool) -> dict[str, Any]:
    """What `check` reports: server version, pgvector presence, schema version."""
    async with pool.acquire() as conn:
        return {
            "version": await conn.fetchval("SHOW server_version"),
            "pgvector": await conn.fetchval(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"),
            "schema": await conn.fetchval("SELECT max(version) FROM dz_schema"),
        }
