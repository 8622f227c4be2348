"""The ledger: one Postgres row per file version, the single source of truth for progress.

Claims are `FOR UPDATE SKIP LOCKED` with expiring leases, so any number of daemons share the
work and a dead holder's files are taken over once its lease runs out. A lease is renewed only
while its work moves (`moved`): a file stuck in a call that never returns is taken over too.
Every daemon keeps a heartbeat row in `dz_daemons`; the claims of one that stopped, or fell
silent for longer than its lease, are released by the others. Every write checks the claim
(`claimed_by = me`): a worker that lost its lease cannot overwrite a newer holder's work.
The SQL lives in `sql/queries.sql`.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import asyncpg

from daemon.database import sql
from daemon.errors import DaemonError, LeaseLost
from daemon.logs import get_logger
from daemon.sessions import Sessions

log = get_logger("dropzone.ledger")

WORK_STAGES = ("hash", "upload", "store", "finish")
OUTPUTS = ("outcome", "sha256", "object_key", "etag", "document_id", "chunks")
ANALYZE_FIRST = 1000  # files discovered by one daemon before it first analyzes the ledger


@dataclass
class FileRow:
    """One file version as the ledger knows it."""

    id: int
    zone: str
    rel_path: str  # as shown: bytes that are not UTF-8 appear as backslash escapes
    size_bytes: int
    mtime_ns: int
    stage: str = "hash"
    outcome: str | None = None
    sha256: str | None = None
    object_key: str | None = None
    etag: str | None = None
    document_id: int | None = None
    chunks: int | None = None
    batch_id: uuid.UUID | None = None
    mlflow_run_id: str | None = None
    reported: bool = False
    stage_ms: dict[str, float] = field(default_factory=dict)
    attempts: int = 0
    last_error: str | None = None
    updated_at: datetime | None = None
    discovered_at: datetime | None = None  # when first seen: a key's {found} time
    rel_raw: bytes | None = None  # the exact name, when it is not valid UTF-8

    @property
    def fs_path(self) -> str:
        """The path relative to the zone, as the filesystem knows it."""
        return os.fsdecode(self.rel_raw) if self.rel_raw else self.rel_path

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> FileRow:
        values = {f.name: record[f.name] for f in fields(cls)}
        values["stage_ms"] = json.loads(values["stage_ms"] or "{}")
        return cls(**values)


@dataclass(frozen=True)
class Entry:
    """A file the watcher found ready: its path relative to the zone and its version."""

    rel_path: str  # as os.scandir gives it (undecodable bytes as surrogate escapes)
    size_bytes: int
    mtime_ns: int

    def names(self) -> tuple[str, bytes | None]:
        """(shown name, exact bytes if the name is not valid UTF-8)."""
        raw = self.rel_path.encode("utf-8", "surrogateescape")
        shown = raw.decode("utf-8", "backslashreplace")
        return shown, (raw if shown != self.rel_path else None)


class Ledger:
    """Claims and state transitions for the files of this daemon's zones."""

    def __init__(self, sessions: Sessions, zones: Sequence[str], owner: str,
                 lease_s: float) -> None:
        self.sessions = sessions
        self.zones = list(zones)
        self.owner = owner
        self.lease_s = lease_s
        self.wakeup = asyncio.Event()
        # claims this process knows it holds -> until when their work counts as moving
        # (monotonic: the last time it moved, or the deadline of the call it is in)
        self.held: dict[int, float] = {}
        self._stalled: set[int] = set()  # held claims no longer renewed (logged once)
        self._claiming = 0  # claim queries in flight (their rows are not in `held` yet)
        self._analyze_at = ANALYZE_FIRST  # rows discovered here that call for an ANALYZE
        self._unanalyzed = 0

    async def discover(self, zone: str, entries: Sequence[Entry]) -> int:
        """Record ready file versions; returns how many were new."""
        if not entries:
            return 0
        shown, raw = zip(*(e.names() for e in entries), strict=True)
        rows = await self.sessions.query(
            sql("discover"), zone, list(shown), [e.size_bytes for e in entries],
            [e.mtime_ns for e in entries], list(raw))
        if rows:
            self.wakeup.set()
            await self._analyze_if_grown(len(rows))
        return len(rows)

    async def _analyze_if_grown(self, new: int) -> None:
        """Statistics for a ledger that grew by many rows at once (a backfill): without them
        the claim sorts every due row to keep 32, ~14 ms instead of ~0.8 at 20,000 rows
        (bench/ledger_plans.py), and autovacuum analyzes only a minute or more later. Each
        ANALYZE doubles the growth that calls for the next, so a backfill runs a few."""
        self._unanalyzed += new
        if self._unanalyzed >= self._analyze_at:
            self._unanalyzed, self._analyze_at = 0, self._analyze_at * 2
            try:
                await self.sessions.execute(sql("analyze_ledger"))
            except DaemonError as exc:  # only slower claims until autovacuum analyzes
                log.warning("ledger_not_analyzed", error=str(exc))

    async def _claim(self, name: str, *args: Any) -> list[FileRow]:
        """Run a claiming query and remember what it took."""
        self._claiming += 1
        try:
            rows = [FileRow.from_record(r) for r in await self.sessions.query(sql(name), *args)]
        finally:
            self._claiming -= 1
        now = time.monotonic()
        self.held.update((r.id, now) for r in rows)
        return rows

    async def claim(self, limit: int) -> list[FileRow]:
        return await self._claim("claim", self.owner, self.lease_s, self.zones, limit,
                                 list(self.held))

    def moved(self, ids: Iterable[int], for_s: float = 0.0) -> None:
        """The work on these claims moved now (or is in a call bounded by `for_s`). Safe from
        a thread: it only changes the marks of claims held already."""
        until = time.monotonic() + for_s
        for file_id in ids:
            mark = self.held.get(file_id)
            if mark is not None and mark < until:
                self.held[file_id] = until
            self._stalled.discard(file_id)

    def idle_s(self, ids: Iterable[int]) -> float:
        """How long the work on these claims has not moved (its most recent move counts)."""
        marks = [self.held[i] for i in ids if i in self.held]
        return max(0.0, time.monotonic() - max(marks)) if marks else 0.0

    def _forget(self, ids: Iterable[int]) -> None:
        for file_id in ids:
            self.held.pop(file_id, None)
            self._stalled.discard(file_id)

    async def advance_many(self, moves: Sequence[tuple[FileRow, str]],
                           conn: asyncpg.Connection | None = None) -> set[int]:
        """Record what the stages put on these rows (sha256, object key, etag, document, chunks,
        outcome, timings) and move each to its next stage, in one statement. Returns the ids
        whose claim another worker holds now (those rows are left untouched)."""
        if not moves:
            return set()
        rows = [row for row, _ in moves]
        args = (self.owner, self.lease_s, [r.id for r in rows], [stage for _, stage in moves],
                *([getattr(r, name) for r in rows] for name in OUTPUTS),
                [json.dumps(r.stage_ms) for r in rows])
        query = sql("advance")
        done = {r["id"] for r in await (conn.fetch(query, *args) if conn is not None
                                         else self.sessions.query(query, *args))}
        for row, stage in moves:
            if row.id in done:
                row.stage = stage
                if conn is None:  # inside a transaction it is not ours to forget until commit
                    self.let_go(row)
        if any(stage in WORK_STAGES for _, stage in moves):
            self.wakeup.set()
        return {r.id for r in rows} - done

    async def advance(self, row: FileRow, stage: str, conn: asyncpg.Connection | None = None,
                      **outputs: Any) -> None:
        """Put `outputs` on the row and move it on to `stage`; raise LeaseLost if it was taken."""
        _apply(row, **outputs)
        if await self.advance_many([(row, stage)], conn):
            raise LeaseLost(f"file {row.id} was claimed by another worker")

    def lost(self, row: FileRow) -> None:
        """Forget a claim another worker took over."""
        self._forget([row.id])

    def let_go(self, row: FileRow) -> None:
        """Forget a claim once the file has left the worker stages (after its commit)."""
        if row.stage not in WORK_STAGES:
            self._forget([row.id])

    async def retry_later(self, row: FileRow, error: str, delay_s: float,
                          counts: bool = True) -> None:
        """Try again in `delay_s`; `counts=False` when a dependency, not the file, failed."""
        attempts = await self.sessions.fetchval(sql("retry_later"), row.id, self.owner, error,
                                                delay_s, int(counts))
        if attempts is None:
            raise LeaseLost(f"file {row.id} was claimed by another worker")
        row.attempts, row.last_error = attempts, error
        self._forget([row.id])

    async def quarantine(self, row: FileRow, error: str) -> None:
        if await self.sessions.fetchval(sql("quarantine"), row.id, self.owner, error) is None:
            raise LeaseLost(f"file {row.id} was claimed by another worker")
        self._forget([row.id])
        _apply(row, stage="quarantined", outcome="quarantined", last_error=error)

    async def release(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        await self.sessions.execute(sql("release"), self.owner, ids)
        self._forget(ids)

    async def release_all(self) -> None:
        await self.sessions.execute(sql("release_owner"), self.owner)
        self._forget(list(self.held))

    async def heartbeat(self) -> None:
        """Renew the claims whose work moved within the last lease; the others lapse, for
        another daemon to take over (this one's stage deadline cancels their stuck work)."""
        since = time.monotonic() - self.lease_s
        moving = [i for i, mark in self.held.items() if mark >= since]
        stalled = set(self.held) - set(moving) - self._stalled
        if stalled:
            log.warning("claims_not_renewed", files=len(stalled), idle_s=self.lease_s,
                        reason="their work has not moved for a whole lease")
            self._stalled |= stalled
        await self.sessions.execute(sql("heartbeat"), self.owner, self.lease_s, moving)

    async def alive(self) -> None:
        """This daemon's heartbeat row: others judge whether it lives by its age."""
        await self.sessions.execute(sql("daemon_alive"), self.owner, socket.gethostname(),
                                    os.getpid(), self.lease_s)

    async def stopped(self) -> None:
        """A clean exit, said in the heartbeat row; long-gone daemons' rows are forgotten."""
        await self.sessions.execute(sql("daemon_stopped"), self.owner)
        await self.sessions.execute(sql("forget_daemons"))

    async def release_strays(self) -> int:
        """Hand back claims recorded for us whose reply we never got (a connection broke)."""
        if self._claiming:
            return 0
        rows = await self.sessions.query(sql("release_strays"), self.owner, list(self.held))
        if rows:
            log.warning("stray_claims_released", files=len(rows))
            self.wakeup.set()
        return len(rows)

    async def object_wanted(self, row: FileRow, url: str) -> bool:
        """Whether the object at `row.object_key` is named by a document or by another file
        version on its way (then it must stay)."""
        return bool(await self.sessions.fetchval(sql("object_wanted"), url, row.object_key,
                                                 row.id))

    async def own_contents(self, rows: Sequence[FileRow]) -> dict[int, str]:
        """Claim each row's content (`row.sha256`) in its zone for that row; returns, for the
        rows that are duplicates, the path of the version that owns their content."""
        first: dict[tuple[str, str | None], FileRow] = {}
        for row in rows:
            first.setdefault((row.zone, row.sha256), row)
        zones, shas = [zone for zone, _ in first], [sha for _, sha in first]
        owned = {r["file_id"] for r in await self.sessions.query(
            sql("own_content"), zones, shas, [row.id for row in first.values()])}
        if all(row.id in owned for row in rows):
            return {}
        found = await self.sessions.query(sql("content_owner"), zones, shas)
        owner = {(f["zone"], f["sha256"]): f for f in found}
        return {row.id: str(owner[row.zone, row.sha256]["rel_path"]) for row in rows
                if owner[row.zone, row.sha256]["id"] != row.id}

    async def track_window(self) -> tuple[int, float]:
        """How many files wait for an MLflow record, and how long the oldest has waited."""
        row = (await self.sessions.query(sql("track_window"), self.zones))[0]
        return int(row["files"]), float(row["oldest_s"])

    async def claim_batch(self, limit: int) -> tuple[list[FileRow], bool]:
        """A batch to record: first one whose tracker died (then True: its MLflow runs may
        exist already), else up to `limit` files never tried (then False)."""
        rows = await self._claim("claim_orphan_batch", self.owner, self.lease_s, self.zones)
        resumed = bool(rows)
        if not rows:
            rows = await self._claim("claim_new_batch", self.owner, self.lease_s, self.zones,
                                     uuid.uuid4(), limit)
        return sorted(rows, key=lambda r: r.id), resumed

    async def tracked(self, ids: Sequence[int], run_id: str | None) -> None:
        await self.tracked_each(ids, [run_id] * len(ids))

    async def tracked_each(self, ids: Sequence[int], run_ids: Sequence[str | None]) -> None:
        """The files' MLflow records exist, each file's in run `run_ids[i]`."""
        await self.sessions.execute(sql("tracked"), self.owner, list(ids), list(run_ids))
        self._forget(ids)
        self.wakeup.set()

    async def unfinished(self, horizon: int, stages: Sequence[str]) -> int:
        """Files up to `horizon` (an id) still in one of `stages`."""
        return int(await self.sessions.fetchval(sql("unfinished"), self.zones, horizon,
                                                list(stages)))

    async def untracked(self, horizon: int) -> int:
        return int(await self.sessions.fetchval(sql("untracked"), self.zones, horizon))

    async def waiting(self) -> dict[str, int]:
        """Files of each zone not yet at their end."""
        rows = await self.sessions.query(sql("waiting"), self.zones)
        return {zone: 0 for zone in self.zones} | {r["zone"]: int(r["files"]) for r in rows}

    async def reap_dead(self) -> int:
        """Give back the claims of holders that stopped or whose heartbeat is older than their
        lease (never judged from this host's /proc); returns how many claims."""
        rows = await self.sessions.query(sql("reap_dead"), self.owner)
        for holder, files in Counter(str(r["claimed_by"]) for r in rows).items():
            log.warning("claims_reaped", holder=holder, files=files,
                        reason="its heartbeat stopped")
        if rows:
            self.wakeup.set()
        return len(rows)

    async def horizon(self) -> int:
        return int(await self.sessions.fetchval(sql("horizon")))


def _apply(row: FileRow, **values: Any) -> None:
    for name, value in values.items():
        if value is not None:
            setattr(row, name, value)


def state_of(stage: str, outcome: str) -> str:
    """The state `status` shows: the next stage while in flight, the outcome once done."""
    return outcome if stage == "done" and outcome else stage
