"""The ledger: discovery, exclusive claims with leases, ownership of content, batches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.config import Settings
from daemon.errors import LeaseLost
from daemon.ledger import Entry, Ledger
from daemon.sessions import Sessions
from tests.helpers import settings_for


@pytest.fixture
async def sessions(tmp_path: Path, database_url: str) -> AsyncIterator[Sessions]:
    settings: Settings = settings_for(tmp_path, database_url)
    async with Sessions(settings) as opened:
        yield opened


def ledger(sessions: Sessions, owner: str, lease_s: float = 30) -> Ledger:
    return Ledger(sessions, ["docs"], owner, lease_s)


async def test_discovery_is_idempotent_per_version(sessions: Sessions) -> None:
    """The same version twice is one row; a new size or mtime is a new row."""
    a = ledger(sessions, "a")
    assert await a.discover("docs", [Entry("x.txt", 3, 100), Entry("y.txt", 4, 100)]) == 2
    assert await a.discover("docs", [Entry("x.txt", 3, 100)]) == 0
    assert await a.discover("docs", [Entry("x.txt", 5, 200)]) == 1


async def test_a_large_discovery_gives_the_ledger_statistics(sessions: Sessions) -> None:
    """A backfill's thousands of new rows are analyzed at once (before, the claim sorted
    every due row): the planner's row count is known from the 1,000th file."""
    async def planned_rows() -> float:
        return float(await sessions.fetchval(
            "SELECT reltuples FROM pg_class WHERE oid = 'dz_files'::regclass"))
    a = ledger(sessions, "a")
    await a.discover("docs", [Entry(f"{i}.txt", 1, 1) for i in range(999)])
    assert await planned_rows() <= 0  # never analyzed: -1 (0 on Postgres before 14)
    await a.discover("docs", [Entry("last.txt", 1, 1)])
    assert await planned_rows() == 1000


async def test_claims_are_exclusive(sessions: Sessions) -> None:
    """Two owners claiming at once get disjoint files that together are all of them."""
    a, b = ledger(sessions, "a"), ledger(sessions, "b")
    await a.discover("docs", [Entry(f"f{i}.txt", i, 1) for i in range(50)])
    got_a, got_b = await asyncio.gather(a.claim(30), b.claim(30))
    ids_a, ids_b = {r.id for r in got_a}, {r.id for r in got_b}
    assert not ids_a & ids_b
    assert len(ids_a | ids_b) == 50


async def test_an_expired_lease_is_taken_over_and_the_old_holder_locked_out(
        sessions: Sessions) -> None:
    """After the lease runs out another owner claims the file; the first can no longer write."""
    a, b = ledger(sessions, "a", lease_s=0.3), ledger(sessions, "b")
    await a.discover("docs", [Entry("x.txt", 1, 1)])
    [row] = await a.claim(1)
    assert await b.claim(1) == []
    await asyncio.sleep(0.5)
    [taken] = await b.claim(1)
    assert taken.id == row.id
    with pytest.raises(LeaseLost):
        await a.advance(row, "upload", sha256="0" * 64)


async def test_retry_later_hides_the_file_until_due(sessions: Sessions) -> None:
    """A file scheduled for later is not claimable now, and is claimable when due."""
    a = ledger(sessions, "a")
    await a.discover("docs", [Entry("x.txt", 1, 1)])
    [row] = await a.claim(1)
    await a.retry_later(row, "SlowDown", 0.3)
    assert row.attempts == 1
    assert await a.claim(1) == []
    await asyncio.sleep(0.4)
    assert [r.id for r in await a.claim(1)] == [row.id]


async def test_content_is_owned_once_and_taken_over_from_quarantine(sessions: Sessions) -> None:
    """The first version with a content owns it, even within one batch; a duplicate learns the
    owner's path; asking again is harmless; a quarantined owner's content is taken over."""
    a = ledger(sessions, "a")
    await a.discover("docs", [Entry("one.txt", 1, 1), Entry("two.txt", 1, 2)])
    first, second = await a.claim(2)
    first.sha256 = second.sha256 = "ab" * 32
    assert await a.own_contents([first, second]) == {second.id: first.rel_path}
    assert await a.own_contents([first]) == {}
    await a.quarantine(first, "broken")
    assert await a.own_contents([second]) == {}


async def test_a_batch_left_by_a_dead_tracker_is_finished_whole(sessions: Sessions) -> None:
    """Rows of a batch whose tracker died are claimed together, before any new rows."""
    a, b = ledger(sessions, "a", lease_s=0.3), ledger(sessions, "b")
    await a.discover("docs", [Entry(f"f{i}", 1, i) for i in range(5)])
    for row in await a.claim(5):
        await a.advance(row, "upload", sha256=f"{row.id:064x}", object_key="k")
        await a.advance(row, "store")
        await a.advance(row, "track", outcome="stored")
    first, resumed = await a.claim_batch(3)  # a's tracker takes 3, then "dies"
    assert not resumed
    assert len(first) == 3 and len({r.batch_id for r in first}) == 1
    await asyncio.sleep(0.5)
    again, resumed = await b.claim_batch(10)
    assert resumed
    assert {r.id for r in again} == {r.id for r in first}
    assert {r.batch_id for r in again} == {first[0].batch_id}
    rest, _ = await b.claim_batch(10)
    assert len(rest) == 2 and rest[0].batch_id != first[0].batch_id
