"""`gc`: find the objects nothing names any more, and with `--delete` remove them.

A file superseded, quarantined or deleted after its upload but before its document committed
can leave its object behind; the pipeline removes what it can at once, and this sweeps what is
left (a crash, a refused delete). An object is an *orphan*, and only then removed, when

* its key is one of ours: it holds a SHA-256 the way `{sha256}` writes it (every key template
  has one). Anything else under the store (`check`'s probe objects, files put there by hand)
  is never touched, only counted;
* nothing names it (queries.sql, `gc_named`): no `documents` row (content shared by two zones
  stays while either names it), no ledger row still in flight, no ledger row whose document
  still exists (a store folder renamed since);
* it was last written more than `--min-age-s` ago (default an hour), so an upload whose row has
  not committed yet is never taken.

A dry run by default. With `--delete`, orphans are asked again a few hundred at a time just
before they go, so a file that took up the same content since the listing keeps it. What
remains is the time between that question and the delete: a file that fixes the same key and
uploads it within it loses its object. It takes the same content dropped again at that very
moment; a conditional delete could close it, but a rewrite of the same bytes has the same ETag.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from daemon.commands import FAILURES, fail, iso, printable
from daemon.commands.status import human_age
from daemon.config import Settings
from daemon.database import sql
from daemon.errors import EXIT_OK, EXIT_QUARANTINED, DaemonError
from daemon.logs import redact_text
from daemon.objectstore import ObjectEntry
from daemon.retry import describe
from daemon.sessions import Sessions

DEFAULT_MIN_AGE_S = 3600.0
BATCH = 5000  # keys per `gc_named` call: each call scans documents and dz_files at most once
RECHECK = 200  # orphans asked again at once, then deleted: a fraction of a second apart
DELETES_AT_ONCE = 8
_SHA256 = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


@dataclass
class Sweep:
    """What one run found (and removed): orphans, and how many objects were left alone why."""

    root: str
    min_age_s: float
    orphans: list[ObjectEntry] = field(default_factory=list)
    named: int = 0
    young: int = 0
    foreign: int = 0
    removed: list[ObjectEntry] = field(default_factory=list)
    renamed: list[str] = field(default_factory=list)  # named again by the time of the delete
    failed: dict[str, str] = field(default_factory=dict)


def is_ours(key: str) -> bool:
    """A key dropzone could have made: it holds a SHA-256 as `{sha256}` writes it."""
    return _SHA256.search(key) is not None


def age_s(entry: ObjectEntry, now: datetime) -> float:
    return (now - entry.modified).total_seconds()


async def named_keys(sessions: Sessions, keys: Sequence[str]) -> set[str]:
    """The keys something still names (`gc_named`), asked in batches."""
    named: set[str] = set()
    for start in range(0, len(keys), BATCH):
        batch = list(keys[start:start + BATCH])
        urls = [sessions.object_url(key) for key in batch]
        named.update(row["key"] for row in await sessions.query(sql("gc_named"), batch, urls))
    return named


async def find_orphans(sessions: Sessions, min_age_s: float,
                       now: datetime | None = None) -> Sweep:
    """List the store and sort every object: not ours, named, too young, or orphan."""
    entries = await sessions.list_object_entries()
    now = now or datetime.now(UTC)
    sweep = Sweep(sessions.object_url(""), min_age_s)
    ours = [entry for entry in entries if is_ours(entry.key)]
    sweep.foreign = len(entries) - len(ours)
    named = await named_keys(sessions, [entry.key for entry in ours])
    sweep.named = len(named)
    unnamed = [entry for entry in ours if entry.key not in named]
    sweep.orphans = [entry for entry in unnamed if age_s(entry, now) >= min_age_s]
    sweep.young = len(unnamed) - len(sweep.orphans)
    return sweep


async def remove(sessions: Sessions, sweep: Sweep) -> None:
    """Delete the orphans, a batch at a time, each batch asked again just before it goes."""
    for start in range(0, len(sweep.orphans), RECHECK):
        batch = sweep.orphans[start:start + RECHECK]
        named = await named_keys(sessions, [entry.key for entry in batch])
        sweep.renamed.extend(entry.key for entry in batch if entry.key in named)
        gate = asyncio.Semaphore(DELETES_AT_ONCE)
        await asyncio.gather(*(_remove_one(sessions, sweep, entry, gate)
                               for entry in batch if entry.key not in named))


async def _remove_one(sessions: Sessions, sweep: Sweep, entry: ObjectEntry,
                      gate: asyncio.Semaphore) -> None:
    async with gate:
        try:
            await sessions.delete_object(entry.key)
        except DaemonError as exc:
            sweep.failed[entry.key] = redact_text(describe(exc))
            return
    sweep.removed.append(entry)


async def collect(settings: Settings, min_age_s: float, delete: bool) -> Sweep:
    """One run of `gc` (the command without its printing): the orphans, removed if asked."""
    async with Sessions(settings) as sessions:
        sweep = await find_orphans(sessions, min_age_s)
        if delete:
            await remove(sessions, sweep)
    return sweep


# -- output -----------------------------------------------------------------------------------

def human_bytes(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def orphan_line(entry: ObjectEntry, now: datetime, verb: str) -> str:
    return (f"{verb:<8} {human_age(max(0.0, age_s(entry, now))):>12} old  "
            f"{human_bytes(entry.size):>9}  {printable(entry.key)}")


def left_alone(sweep: Sweep) -> str:
    return (f"left alone: {sweep.named} named by a document or a file in flight, "
            f"{sweep.young} unnamed but younger than {human_age(sweep.min_age_s)}, "
            f"{sweep.foreign} not dropzone objects (no SHA-256 in the key)")


def summary(sweep: Sweep, deleted: bool) -> list[str]:
    """The closing lines: how many (would be) removed, and why the others stay."""
    size = human_bytes(sum(entry.size for entry in sweep.orphans))
    if not deleted:
        head = (f"{len(sweep.orphans)} orphan object(s) ({size}) under {sweep.root}"
                + ("; run with --delete to remove them" if sweep.orphans else ""))
    else:
        head = (f"removed {len(sweep.removed)} orphan object(s) "
                f"({human_bytes(sum(entry.size for entry in sweep.removed))}) under {sweep.root}")
        if sweep.renamed:
            head += f"; {len(sweep.renamed)} kept: named again before their delete"
        if sweep.failed:
            head += f"; {len(sweep.failed)} could not be removed (see above)"
    return [head, left_alone(sweep)]


def render(sweep: Sweep, deleted: bool, now: datetime) -> str:
    if not deleted:
        lines = [orphan_line(entry, now, "orphan") for entry in sweep.orphans]
    else:
        lines = [orphan_line(entry, now, "removed") for entry in sweep.removed]
        lines += [f"kept     {printable(key)}: named again" for key in sweep.renamed]
        lines += [f"FAILED   {printable(key)}: {error}" for key, error in sweep.failed.items()]
    return "\n".join([*lines, *summary(sweep, deleted)])


def as_json(sweep: Sweep, deleted: bool, now: datetime) -> dict[str, Any]:
    def entry_json(entry: ObjectEntry) -> dict[str, Any]:
        return {"key": entry.key, "size": entry.size, "modified": iso(entry.modified),
                "age_s": round(age_s(entry, now), 1)}
    return {"root": sweep.root, "dry_run": not deleted, "min_age_s": sweep.min_age_s,
            "orphans": [entry_json(entry) for entry in sweep.orphans],
            "removed": [entry_json(entry) for entry in sweep.removed],
            "kept_named_again": sweep.renamed, "failed": sweep.failed,
            "left_alone": {"named": sweep.named, "young": sweep.young,
                           "not_ours": sweep.foreign}}


async def run(settings: Settings, delete: bool, min_age_s: float, json_out: bool) -> int:
    try:
        sweep = await collect(settings, min_age_s, delete)
    except FAILURES as exc:
        return fail(exc, settings, "gc")
    now = datetime.now(UTC)
    print(json.dumps(as_json(sweep, delete, now), indent=2, ensure_ascii=False) if json_out
          else render(sweep, delete, now))
    return EXIT_QUARANTINED if sweep.failed else EXIT_OK
