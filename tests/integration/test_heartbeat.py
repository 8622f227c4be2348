"""Liveness: claims renewed only while their work moves, daemons judged by their heartbeat rows
in Postgres (never by this host's /proc), and a stage stuck in a call taken over and cancelled."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.embedders import create as create_embedder
from daemon.embedders.pool import EmbedPool
from daemon.errors import TransientError
from daemon.identity import this_process
from daemon.ledger import Entry, FileRow, Ledger
from daemon.pipeline import process
from daemon.sessions import Sessions
from daemon.stages import Env
from daemon.tracking import Tracking
from tests.helpers import proxy_for, s3_storage, settings_for


@pytest.fixture
async def sessions(tmp_path: Path, database_url: str) -> AsyncIterator[Sessions]:
    async with Sessions(settings_for(tmp_path, database_url)) as opened:
        yield opened


def ledger(sessions: Sessions, owner: str, lease_s: float) -> Ledger:
    return Ledger(sessions, ["docs"], owner, lease_s)


async def claimed_by(sessions: Sessions, file_id: int) -> Any:
    return await sessions.fetchval("SELECT claimed_by FROM dz_files WHERE id = $1", file_id)


async def eventually(get: Callable[[], Awaitable[Any]], timeout_s: float) -> Any:
    """Poll `get()` until it gives something truthy (else the last falsy answer)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not (found := await get()) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    return found


def test_two_owner_ids_of_one_process_differ() -> None:
    """Same host, same pid, same start: the random part still tells two owners apart."""
    first, second = this_process(), this_process()
    assert first != second
    assert first.rsplit(":", 1)[0] == second.rsplit(":", 1)[0]


async def test_only_claims_whose_work_moved_are_renewed(sessions: Sessions) -> None:
    """After a lease without news, the heartbeat renews the claim whose work moved and lets the
    stuck one lapse: another owner takes that one, not the other."""
    a, b = ledger(sessions, "a", 1.0), ledger(sessions, "b", 30)
    await a.discover("docs", [Entry("moving.txt", 1, 1), Entry("stuck.txt", 2, 1)])
    rows = {r.rel_path: r for r in await a.claim(2)}
    await asyncio.sleep(1.2)
    a.moved([rows["moving.txt"].id])
    await a.heartbeat()
    assert [r.rel_path for r in await b.claim(2)] == ["stuck.txt"]
    assert await claimed_by(sessions, rows["moving.txt"].id) == "a"


async def test_the_heartbeat_skips_rows_locked_by_a_write_instead_of_waiting(
        sessions: Sessions) -> None:
    """A claim row our own advance holds locked is not waited on (the two, each locking in its
    own order, deadlocked): the heartbeat renews the others and returns at once."""
    a = ledger(sessions, "a", 30)
    await a.discover("docs", [Entry("busy.txt", 1, 1), Entry("free.txt", 2, 1)])
    rows = {r.rel_path: r for r in await a.claim(2)}
    a.moved([row.id for row in rows.values()])
    async with sessions.db.pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE dz_files SET updated_at = now() WHERE id = $1",
                           rows["busy.txt"].id)
        before = await sessions.fetchval("SELECT lease_until FROM dz_files WHERE id = $1",
                                         rows["free.txt"].id)
        await asyncio.wait_for(a.heartbeat(), 5)
        after = await sessions.fetchval("SELECT lease_until FROM dz_files WHERE id = $1",
                                        rows["free.txt"].id)
    assert after > before


async def test_a_silent_daemon_loses_its_claims_after_its_lease_a_stopped_one_at_once(
        sessions: Sessions) -> None:
    """Claims of a holder whose heartbeat row is fresh stay; once it is older than the holder's
    lease they are released; a holder that said it stopped loses them at once."""
    a, b, c = (ledger(sessions, owner, 1.0) for owner in ("a", "b", "c"))
    for one in (a, b, c):
        await one.alive()
    await a.discover("docs", [Entry("a.txt", 1, 1), Entry("c.txt", 2, 1)])
    [row_a] = await a.claim(1)
    [row_c] = await c.claim(1)
    assert await b.reap_dead() == 0
    await c.stopped()
    assert await b.reap_dead() == 1
    assert await claimed_by(sessions, row_c.id) is None
    await a.heartbeat()
    assert await claimed_by(sessions, row_a.id) == "a"
    await asyncio.sleep(1.2)
    await b.alive()
    assert await b.reap_dead() == 1
    assert await claimed_by(sessions, row_a.id) is None


async def renew(ledger: Ledger) -> None:
    """What the supervisor's lease loop does, often."""
    while True:
        await ledger.heartbeat()
        await asyncio.sleep(0.2)


async def test_a_stage_stuck_in_a_call_is_taken_over_then_cancelled(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """An upload whose connection froze: its claim lapses after the lease and another owner takes
    the file while the call still hangs; the stage is cancelled once it has not moved for
    stage_timeout_s, and the new holder's claim is left alone."""
    proxy = proxy_for(s3_endpoint)
    settings = settings_for(tmp_path, database_url,
                            storage=s3_storage(f"http://127.0.0.1:{proxy.port}", bucket),
                            pipeline={"stage_timeout_s": 8, "lease_s": 5, "cpu_workers": 0})
    source = tmp_path / "zones" / "docs" / "a.txt"
    source.write_text("stuck upload " * 100)
    embedder = EmbedPool(create_embedder(settings.embedding), settings.embedding, 0)
    try:
        async with Sessions(settings) as sessions:
            a, b = ledger(sessions, "a", 1.0), ledger(sessions, "b", 30)
            stat = source.stat()
            await a.discover("docs", [Entry("a.txt", stat.st_size, stat.st_mtime_ns)])
            [row] = await a.claim(1)
            proxy.set("blackhole")
            work = asyncio.create_task(process([row], Env(settings, sessions, a, embedder)))
            renewing = asyncio.create_task(renew(a))
            try:
                taken: list[FileRow] = await eventually(lambda: b.claim(1), 6)
                assert [r.id for r in taken] == [row.id]
                assert not work.done(), "taken over while the call still hung"
                assert await asyncio.wait_for(work, 30) == []
            finally:
                renewing.cancel()
                work.cancel()
            assert await claimed_by(sessions, row.id) == "b"
            assert row.id not in a.held
    finally:
        proxy.stop()
        embedder.close()


def _pid(client: Any, experiment_id: str) -> int:
    return os.getpid()


def _hang(client: Any, experiment_id: str) -> None:
    time.sleep(3600)


async def test_a_hung_mlflow_call_times_out_and_its_process_is_replaced(
        tmp_path: Path, database_url: str) -> None:
    """A call the MLflow process never answers fails as transient after mlflow.timeout_s, and
    the next call runs in a new process."""
    settings = settings_for(tmp_path, database_url, mlflow={"timeout_s": 10})
    tracking = Tracking(settings.mlflow, settings.state_dir)
    try:
        first = await tracking.call(_pid)
        with pytest.raises(TransientError, match="no answer"):
            await asyncio.wait_for(tracking.call(_hang), 60)
        assert await tracking.call(_pid) != first
    finally:
        tracking.close()
