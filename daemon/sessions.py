"""Sessions: the one pool of external clients, opened once and closed once.

This is the original guide's UnifiedSessionManager done right for asyncio: entered with
`async with Sessions(settings) as s`, it owns the object store client, the Postgres pool and
the MLflow client with its thread for the life of the process. Every call to the outside goes
through the retry policy here; stages never build clients of their own. Other programs may use
it too (see README, "Sessions API").
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from functools import partial
from types import TracebackType
from typing import Any, BinaryIO, TypeAlias, TypeVar

import asyncpg

from daemon.config import Settings
from daemon.database import Database, server_facts
from daemon.errors import DaemonError, Misconfigured, TransientError
from daemon.health import Health
from daemon.logs import about, get_logger
from daemon.objectstore import ObjectEntry, ObjectStore, PutResult, open_store, preload_sdk
from daemon.retry import Breaker, RetryPolicy, describe
from daemon.tracking import Tracking

T = TypeVar("T")
log = get_logger("dropzone.sessions")
Connection: TypeAlias = asyncpg.Connection
DEPENDENCIES = ("objects", "postgres", "mlflow", "state")  # state: done/quarantine folders


class Sessions:
    """Object store, Postgres and MLflow behind one async context manager."""

    def __init__(self, settings: Settings, policy: RetryPolicy | None = None,
                 mlflow_policy: RetryPolicy | None = None, health_owner: str | None = None
                 ) -> None:
        """`health_owner`: record the dependencies' health for `status` under this name (the
        daemon does; other users of the sessions need not)."""
        self.settings = settings
        self.policy = policy or RetryPolicy()
        self.mlflow_policy = mlflow_policy or self.policy
        self._stack = AsyncExitStack()
        self.db = Database(settings)
        self.tracking = Tracking(settings.mlflow, settings.state_dir)
        self._store: ObjectStore | None = None
        self.breakers = {name: Breaker(name) for name in DEPENDENCIES}
        self.health = Health(health_owner, self.breakers) if health_owner else None

    async def __aenter__(self) -> Sessions:
        try:
            self._stack.callback(self.tracking.close)
            sdk = asyncio.ensure_future(preload_sdk(self.settings.storage))
            self._stack.callback(sdk.cancel)
            await self._stack.enter_async_context(self.db)
            self._stack.callback(self._forget_outages)
            if self.health is not None:
                self.health.start(self.db.pool)
                self._stack.push_async_callback(self.health.stop, self.db.pool)
            await sdk
            self._store = await open_store(self.settings.storage, self._stack)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._stack.aclose()

    def _forget_outages(self) -> None:
        for breaker in self.breakers.values():
            breaker.forget()

    async def _call(self, dependency: str, what: str, fn: Callable[..., Awaitable[T]],
                    *args: Any) -> T:
        """One call to a dependency: through its breaker, under its retry policy."""
        policy = self.mlflow_policy if dependency == "mlflow" else self.policy
        return await self._guarded(dependency, policy.call, what, fn, *args)

    async def _guarded(self, dependency: str, fn: Callable[..., Awaitable[T]], *args: Any,
                       gate: bool = True) -> T:
        """`fn(*args)` through the dependency's breaker (`gate=False`: tried even while it is
        open, its outcome still counted), its log lines naming the dependency
        (daemon.logs.fold folds them while it is down)."""
        breaker = self.breakers[dependency]
        if gate:
            breaker.check()
        try:
            with about(dependency):
                result = await fn(*args)
        except DaemonError as exc:
            exc.dependency = exc.dependency or dependency
            if isinstance(exc, TransientError | Misconfigured):
                breaker.failed(exc)
            raise
        breaker.succeeded()
        return result

    async def on_disk(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking file work in a thread, under the `state` breaker: a full or read-only
        disk makes files wait; a folder we may not write to is a configuration error."""
        async def run() -> T:
            try:
                return await asyncio.to_thread(fn, *args)
            except PermissionError as exc:
                raise Misconfigured(f"{what}: {describe(exc)}") from exc
        return await self._call("state", what, run)

    def outage(self, error: BaseException) -> Breaker | None:
        """The open breaker behind an error, if the error came from a dependency that is down."""
        name = getattr(error, "dependency", None)
        breaker = self.breakers.get(name) if name else None
        return breaker if breaker is not None and breaker.is_open else None

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            raise RuntimeError("sessions are not open")
        return self._store

    # -- objects ------------------------------------------------------------------------------

    async def put_stream(self, key: str, handle: BinaryIO, size: int,
                         sha256: bytes) -> PutResult:
        """Upload an open file (multipart when large) to `key` under the configured prefix;
        FileVanished, and nothing stored, if its bytes no longer hash to `sha256`."""
        return await self._call("objects", f"put {key}", self.store.put_stream, key, handle,
                                size, sha256)

    async def put_object(self, key: str, data: bytes, sha256: bytes | None = None) -> PutResult:
        return await self._call("objects", f"put {key}", self.store.put_bytes, key, data,
                                sha256)

    async def get_object(self, key: str) -> bytes:
        return await self._call("objects", f"get {key}", self.store.get, key)

    async def delete_object(self, key: str) -> None:
        await self._call("objects", f"delete {key}", self.store.delete, key)

    async def list_objects(self, prefix: str = "") -> list[str]:
        return await self._call("objects", f"list {prefix}", self.store.list_keys, prefix)

    async def list_object_entries(self, prefix: str = "") -> list[ObjectEntry]:
        """Every object under `prefix` with when it was last written and its size."""
        return await self._call("objects", f"list {prefix}", self.store.list_entries, prefix)

    def object_url(self, key: str) -> str:
        return self.store.url(key)

    # -- postgres -----------------------------------------------------------------------------

    async def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Rows of a parameterised query ($1, $2, ...), retried on transient errors."""
        return await self._call("postgres", "query", self.db.pool.fetch, sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._call("postgres", "query", self.db.pool.fetchval, sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        return await self._call("postgres", "query", self.db.pool.execute, sql, *args)

    async def transaction(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """Run `fn(conn)` in one transaction; the whole unit is retried on transient errors."""
        return await self._call("postgres", "transaction", self._in_transaction, fn)

    async def _in_transaction(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        async with self.db.pool.acquire() as conn, conn.transaction():
            return await fn(conn)

    async def end_lost_sessions(self) -> int:
        """End our Postgres sessions that the pool dropped (see Database.end_lost_sessions)."""
        ended: int = await self._call("postgres", "query", self.db.end_lost_sessions)
        if ended:
            log.warning("postgres_sessions_ended", sessions=ended,
                        reason="their connections were dropped after a timeout; "
                               "they could hold locks others wait on")
        return ended

    async def bulk_insert_embeddings(
        self, rows: Iterable[tuple[Any, ...]] | AsyncIterable[tuple[Any, ...]],
        conn: Connection | None = None,
    ) -> int:
        """COPY rows of EMBEDDING_COLUMNS into document_embeddings (binary, encoded by us)."""
        if conn is not None:
            return await self.db.copy_embeddings(conn, rows)
        return await self.transaction(lambda c: self.db.copy_embeddings(c, rows))

    # -- mlflow -------------------------------------------------------------------------------

    async def mlflow(self, fn: Callable[[Any, str], T], what: str = "mlflow") -> T:
        """Run `fn(client, experiment_id)` in the MLflow thread, with retries."""
        return await self._call("mlflow", what, self.tracking.call, fn)

    async def log_mlflow_run(self, params: Mapping[str, Any], metrics: Mapping[str, float],
                             tags: Mapping[str, str] | None = None) -> str:
        """One finished run with these params, metrics and tags; returns its id."""
        return await self.mlflow(partial(_log_run, params=dict(params), metrics=dict(metrics),
                                         tags=dict(tags or {})))

    # -- health -------------------------------------------------------------------------------

    async def probe_store(self) -> PutResult:
        """Put and read back a probe object; a delete refused (no s3:DeleteObject, which
        processing files does not need) leaves it behind, said once, rather than failing."""
        return await self._guarded("objects", probe_store, self.store, self.policy, False,
                                   gate=False)

    async def probe_database(self) -> dict[str, Any]:
        return await self._call("postgres", "query", server_facts, self.db.pool)

    async def probe_mlflow(self) -> str:
        """Counted by the breaker, and its lines folded like any other call's, but tried even
        while the breaker is open: a daemon waiting at start-up is ready as soon as MLflow is
        back, not after the breaker's cool-down."""
        return await self._guarded("mlflow", probe_mlflow, self.tracking, self.mlflow_policy,
                                   gate=False)


async def probe_store(store: ObjectStore, policy: RetryPolicy,
                      must_delete: bool = True) -> PutResult:
    """Write, read back and delete a probe object, with the configured encryption."""
    key = f".dropzone-check/{uuid.uuid4().hex}"
    payload = uuid.uuid4().bytes
    put = await policy.call("probe put", store.put_bytes, key, payload)
    try:
        if await policy.call("probe get", store.get, key) != payload:
            raise RuntimeError("the probe object read back differently")
    finally:
        try:
            await policy.call("probe delete", store.delete, key)
        except Misconfigured as exc:
            if must_delete:
                raise
            log.warning("probe_object_left", key=key, error=str(exc))
    return put


def _tag_experiment(client: Any, experiment_id: str) -> str:
    client.set_experiment_tag(experiment_id, "dropzone.check", str(int(time.time())))
    return experiment_id


async def probe_mlflow(tracking: Tracking, policy: RetryPolicy) -> str:
    """Write a tag on the experiment: proves the store and the experiment are writable."""
    return await policy.call("mlflow check", tracking.call, _tag_experiment)


def _log_run(client: Any, experiment_id: str, params: Mapping[str, Any],
             metrics: Mapping[str, float], tags: Mapping[str, str]) -> str:
    from mlflow.entities import Metric, Param

    run = client.create_run(experiment_id, tags=dict(tags))
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id,
                     metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)
