"""`gc` against a real store (SeaweedFS, and a local folder) and Postgres: a dry run removes
nothing, `--delete` removes exactly the old objects nothing names, and everything else stays:
young uploads, objects named by a document (of either of two zones sharing it) or by a file in
flight, and objects that are not dropzone's."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from daemon.commands import gc
from daemon.config import Settings
from daemon.objectstore import ObjectEntry
from daemon.sessions import Sessions
from tests.helpers import REPO, s3_storage, settings_for

OLD_S = 2 * 3600  # how far back a local object's mtime is set to make it old


def key_of(name: str) -> str:
    """A key as the default template makes it."""
    return f"dropzones/document/{hashlib.sha256(name.encode()).hexdigest()}/{name}.txt"


@dataclass(frozen=True)
class Seeded:
    orphan: str  # old, named only by rows at their end (quarantined, superseded)
    young: str  # unnamed, just written
    named: str  # a documents row names it (no ledger row)
    in_flight: str  # only a ledger row at `store` names it
    shared: str  # two zones' documents named it; one deleted, its ledger row left
    moved: str  # a document names it through its ledger row only (stored under another root)
    foreign: tuple[str, ...]  # not dropzone's: check's probe, a file put there by hand

    def kept(self) -> set[str]:
        return {self.young, self.named, self.in_flight, self.shared, self.moved, *self.foreign}


async def insert_document(sessions: Sessions, zone: str, key: str, url: str) -> int:
    sha = key.split("/")[2]
    return int(await sessions.fetchval(
        "INSERT INTO documents (zone, doc_type, source_path, object_url, sha256, size_bytes) "
        "VALUES ($1, 'document', $2, $3, $4, 1) RETURNING id", zone, key, url, sha))


async def insert_file(sessions: Sessions, key: str, stage: str, outcome: str | None = None,
                      document_id: int | None = None) -> None:
    await sessions.execute(
        "INSERT INTO dz_files (zone, rel_path, size_bytes, mtime_ns, stage, outcome, sha256, "
        "object_key, document_id) VALUES ('docs', $1, 1, $6, $2, $3, $4, $1, $5)",
        key, stage, outcome, key.split("/")[2], document_id, time.time_ns())  # a new version


async def seed_rows(sessions: Sessions, seeded: Seeded) -> None:
    await insert_file(sessions, seeded.orphan, "quarantined", "quarantined")
    await insert_file(sessions, seeded.orphan, "done", "superseded")
    await insert_document(sessions, "docs", seeded.named, sessions.object_url(seeded.named))
    await insert_file(sessions, seeded.in_flight, "store")
    gone = await insert_document(sessions, "docs", seeded.shared,
                                 sessions.object_url(seeded.shared))
    await insert_file(sessions, seeded.shared, "done", "stored", gone)
    await insert_document(sessions, "other", seeded.shared, sessions.object_url(seeded.shared))
    await sessions.execute("DELETE FROM documents WHERE id = $1", gone)
    moved = await insert_document(sessions, "docs", seeded.moved,
                                  f"file:///elsewhere/objects/{seeded.moved}")
    await insert_file(sessions, seeded.moved, "done", "stored", moved)


async def seed(sessions: Sessions) -> Seeded:
    """Every object but the young one, and the rows that name (or used to name) them."""
    seeded = Seeded(key_of("orphan"), key_of("young"), key_of("named"), key_of("in_flight"),
                    key_of("shared"), key_of("moved"),
                    (".dropzone-check/0123456789abcdef0123456789abcdef", "notes/by-hand.txt"))
    for key in (seeded.kept() | {seeded.orphan}) - {seeded.young}:
        await sessions.put_object(key, key.encode())
    await seed_rows(sessions, seeded)
    return seeded


def age_local(settings: Settings, keys: set[str]) -> None:
    """Make these local objects two hours old."""
    then = time.time() - OLD_S
    for key in keys:
        os.utime(Path(settings.storage.url) / key, (then, then))


async def listed(sessions: Sessions) -> set[str]:
    return set(await sessions.list_objects())


@pytest.fixture(params=["folder", "s3"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Settings:
    if request.param == "folder":
        return settings_for(tmp_path, database_url)
    endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("bucket")
    return settings_for(tmp_path, database_url, storage=s3_storage(endpoint, bucket))


async def seed_old_and_young(sessions: Sessions, settings: Settings) -> tuple[Seeded, float]:
    """Seed, then write the young object; returns the seeds and a --min-age-s between them.
    A folder's objects are aged by their mtime; S3's only by waiting (SeaweedFS keeps whole
    seconds), so the young object is written just before the sweep."""
    seeded = await seed(sessions)
    if not settings.storage.is_s3:
        age_local(settings, (seeded.kept() | {seeded.orphan}) - {seeded.young})
        await sessions.put_object(seeded.young, b"young")
        return seeded, 3600.0
    await asyncio.sleep(4)
    await sessions.put_object(seeded.young, b"young")
    return seeded, 2.5


async def test_a_dry_run_removes_nothing_and_delete_only_the_old_orphan(
        settings: Settings) -> None:
    async with Sessions(settings) as sessions:
        seeded, min_age = await seed_old_and_young(sessions, settings)
        before = await listed(sessions)
        dry = await gc.find_orphans(sessions, min_age)
        assert [entry.key for entry in dry.orphans] == [seeded.orphan]
        assert (dry.named, dry.young, dry.foreign) == (4, 1, 2)
        assert await listed(sessions) == before
        sweep = await gc.find_orphans(sessions, min_age)
        await gc.remove(sessions, sweep)
        assert [entry.key for entry in sweep.removed] == [seeded.orphan]
        assert await listed(sessions) == seeded.kept()


async def test_an_orphan_named_again_before_its_delete_stays(tmp_path: Path,
                                                             database_url: str) -> None:
    """A file that takes up the content between the listing and the delete keeps it."""
    settings = settings_for(tmp_path, database_url)
    async with Sessions(settings) as sessions:
        seeded = await seed(sessions)
        sweep = await gc.find_orphans(sessions, 0)
        assert [entry.key for entry in sweep.orphans] == [seeded.orphan]
        await insert_file(sessions, seeded.orphan, "upload")
        await gc.remove(sessions, sweep)
        assert (sweep.removed, sweep.renamed) == ([], [seeded.orphan])
        assert seeded.orphan in await listed(sessions)


async def test_temp_files_of_a_put_are_not_objects(tmp_path: Path, database_url: str) -> None:
    """A local put's `.put-*` temp file is no object: never listed, so never removed."""
    settings = settings_for(tmp_path, database_url)
    temp = Path(settings.storage.url) / key_of("x").rsplit("/", 1)[0] / ".put-abc123"
    temp.parent.mkdir(parents=True)
    temp.write_bytes(b"half")
    os.utime(temp, (time.time() - OLD_S, time.time() - OLD_S))
    async with Sessions(settings) as sessions:
        sweep = await gc.find_orphans(sessions, 0)
        await gc.remove(sessions, sweep)
    assert (sweep.orphans, sweep.foreign) == ([], 0) and temp.exists()


def gc_command(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", "gc", "--config", str(config), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def seed_for_command(settings: Settings) -> Seeded:
    async def go() -> Seeded:
        async with Sessions(settings) as sessions:
            return await seed(sessions)
    return asyncio.run(go())


def test_gc_as_a_user_runs_it(tmp_path: Path, database_url: str, s3_endpoint: str,
                              bucket: str) -> None:
    """`python -m daemon gc` on S3: too young, nothing; a dry run lists the orphan and says how
    to remove it; `--delete` removes it and says so; `--json` for machines."""
    settings = settings_for(tmp_path, database_url, storage=s3_storage(s3_endpoint, bucket))
    seeded = seed_for_command(settings)
    config = tmp_path / "dropzone.yaml"
    young = gc_command(config)
    assert young.returncode == 0, young.stderr
    assert young.stdout.startswith("0 orphan object(s)") and "1 unnamed but younger" in young.stdout
    dry = gc_command(config, "--min-age-s", "0")
    assert dry.returncode == 0, dry.stderr
    first, *rest = dry.stdout.splitlines()
    assert first.startswith("orphan") and first.endswith(seeded.orphan), dry.stdout
    size = len(seeded.orphan.encode())  # each seeded object holds its key
    assert rest[0].startswith(f"1 orphan object(s) ({size} B) under s3://{bucket}/dz/; run with "
                              "--delete to remove them"), dry.stdout
    assert rest[1] == ("left alone: 4 named by a document or a file in flight, 0 unnamed but "
                       "younger than 0 s, 2 not dropzone objects (no SHA-256 in the key)")
    deleted = gc_command(config, "--min-age-s", "0", "--delete", "--json")
    assert deleted.returncode == 0, deleted.stderr
    report: dict[str, Any] = json.loads(deleted.stdout)
    assert report["dry_run"] is False
    assert [entry["key"] for entry in report["removed"]] == [seeded.orphan]
    assert report["left_alone"] == {"named": 4, "young": 0, "not_ours": 2}
    again = gc_command(config, "--min-age-s", "0", "--delete")
    assert again.stdout.startswith(f"removed 0 orphan object(s) (0 B) under s3://{bucket}/dz/")


def test_a_store_that_cannot_be_reached_is_exit_3(tmp_path: Path, database_url: str) -> None:
    settings_for(tmp_path, database_url, storage={"url": "s3://b/p",
                                                  "endpoint_url": "http://127.0.0.1:9"})
    failed = gc_command(tmp_path / "dropzone.yaml")
    assert failed.returncode == 3 and "gc failed" in failed.stderr, failed.stderr
    negative = gc_command(tmp_path / "dropzone.yaml", "--min-age-s", "-1")
    assert negative.returncode == 2 and "0 or more seconds" in negative.stderr


def test_keys_of_ours_hold_a_sha256() -> None:
    assert gc.is_ours(key_of("a")) and gc.is_ours(f"x/{'ab' * 32}.pdf")
    assert not gc.is_ours(f"x/{'ab' * 33}") and not gc.is_ours(".dropzone-check/" + "a" * 32)
    assert not gc.is_ours(f"x/{'AB' * 32}")


def test_age_is_from_the_last_write() -> None:
    entry = ObjectEntry("k", datetime(2026, 1, 1, tzinfo=UTC), 1)
    assert gc.age_s(entry, datetime(2026, 1, 1, 1, tzinfo=UTC)) == 3600
