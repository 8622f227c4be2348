"""Health rows: a daemon's breakers in dz_health, written even across a Postgres outage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from daemon.errors import TransientError
from daemon.sessions import Sessions
from tests.helpers import proxy_for, settings_for, via_proxy

OWNER = "test-host:1:1"


async def health_row(url: str, dependency: str) -> dict[str, Any] | None:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("SELECT up, error FROM dz_health WHERE owner = $1 AND "
                                  "dependency = $2", OWNER, dependency)
    finally:
        await conn.close()
    return dict(row) if row is not None else None


async def until(check: Callable[[], Awaitable[Any]], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := await check():
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def test_a_change_while_postgres_is_away_is_written_once_it_is_back(
        tmp_path: Path, database_url: str) -> None:
    """A breaker that opens while Postgres cannot be reached is in dz_health soon after
    Postgres is back; the rows go when the sessions close (the daemon stops)."""
    proxy = proxy_for(database_url)
    try:
        settings = settings_for(tmp_path, via_proxy(database_url, proxy))
        async with Sessions(settings, health_owner=OWNER) as sessions:
            first = await until(lambda: health_row(database_url, "mlflow"), 15, "first write")
            assert first == {"up": True, "error": None}
            proxy.set("refuse")
            breaker = sessions.breakers["mlflow"]
            for _ in range(breaker.threshold):
                breaker.failed(TransientError("mlflow: refused"))
            await asyncio.sleep(1)  # the writer woke, and could not write
            assert await health_row(database_url, "mlflow") == first
            proxy.set("pass")

            async def written() -> dict[str, Any] | None:
                row = await health_row(database_url, "mlflow")
                return row if row is not None and not row["up"] else None

            assert await until(written, 20, "the change written") == {
                "up": False, "error": "mlflow: refused"}
        assert await health_row(database_url, "mlflow") is None
    finally:
        proxy.stop()
