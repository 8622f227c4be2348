"""Health: what this daemon knows of its dependencies, kept where `status` can read it.

`status` is another process: it cannot see the daemon's breakers, so each breaker change is
written to `dz_health` (one row per daemon and dependency). A breaker changes inside a call to
its dependency, possibly while Postgres itself is down, so a change only wakes a writer task;
the writer writes every dependency's current state, and again every REFRESH_S (that also
tells `status` this daemon is alive). A write that fails changes nothing: the next one, soon,
writes the state as it is by then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

import asyncpg

from daemon.database import sql
from daemon.logs import get_logger
from daemon.retry import Breaker

log = get_logger("dropzone.health")
REFRESH_S = 30.0  # rows are rewritten this often; `status` trusts rows younger than STALE_S
STALE_S = 120.0
RETRY_S = 5.0  # after a failed write (Postgres away)
WRITE_TIMEOUT_S = 10.0
WRITE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def rows(owner: str, breakers: Mapping[str, Breaker]) -> tuple[Any, ...]:
    """The arguments of `health_record`: this owner's dependencies as they are now."""
    names = list(breakers)
    return (owner, names, [not breakers[n].is_open for n in names],
            [breakers[n].reason or None for n in names],
            [datetime.fromtimestamp(breakers[n].changed_at, UTC) for n in names])


class Health:
    """Writes `breakers` to dz_health as `owner`, from `start` until `stop`."""

    def __init__(self, owner: str, breakers: Mapping[str, Breaker]) -> None:
        self.owner = owner
        self.breakers = breakers
        self.wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        for breaker in breakers.values():
            breaker.listener = self.changed

    def changed(self, _: Breaker) -> None:
        self.wake.set()

    def start(self, pool: asyncpg.Pool) -> None:
        self._task = asyncio.create_task(self._run(pool))

    async def _run(self, pool: asyncpg.Pool) -> None:
        while True:
            self.wake.clear()
            wait_s = REFRESH_S if await self._write(pool) else RETRY_S
            with suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), wait_s)

    async def _write(self, pool: asyncpg.Pool) -> bool:
        try:
            await asyncio.wait_for(pool.execute(sql("health_record"),
                                                *rows(self.owner, self.breakers)),
                                   WRITE_TIMEOUT_S)
        except WRITE_ERRORS as exc:  # Postgres away: its own breaker tells the operator
            log.debug("health_not_written", error=str(exc))
            return False
        return True

    async def stop(self, pool: asyncpg.Pool) -> None:
        """Stop writing and take this daemon's rows away (a stopped daemon reports nothing);
        rows of daemons that died are left to go stale, and are deleted after a day."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        for breaker in self.breakers.values():
            breaker.listener = None
        with suppress(*WRITE_ERRORS):
            await asyncio.wait_for(pool.execute(sql("health_forget"), self.owner),
                                   WRITE_TIMEOUT_S)
