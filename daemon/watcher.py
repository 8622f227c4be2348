"""Watcher: finds files that are ready in each zone and records them in the ledger.

Three ways in, one way out: a scan at start (what arrived while the daemon was down), watchfiles
events while it runs, and a periodic rescan (events can be lost; some filesystems send none).
Every candidate goes through the settler, which calls a file ready once its size and mtime have
not changed for the zone's `settle_ms`; ready files are handed to `ledger.discover`. The watcher
knows nothing of S3 or MLflow. Symlinks are never followed and only regular files are taken.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from daemon.config import ZoneSettings
from daemon.ledger import Entry, Ledger
from daemon.logs import get_logger

log = get_logger("dropzone.watcher")
Version = tuple[int, int]


@dataclass
class _Seen:
    version: Version
    since: float  # wall-clock time since which this version is known to be unchanged


class Settler:
    """Decides when a file is ready: the same (size, mtime) for `settle_s` seconds.

    A file first seen with an mtime older than that is ready at once: nothing has written to it
    for longer than the settle time.
    """

    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self._seen: dict[str, _Seen] = {}

    def observe(self, key: str, version: Version, now: float) -> bool:
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = _Seen(version, min(now, version[1] / 1e9))
        elif seen.version != version:
            seen = self._seen[key] = _Seen(version, now)
        return now - seen.since >= self.settle_s

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)

    def __len__(self) -> int:
        return len(self._seen)

    def pending(self) -> list[str]:
        return list(self._seen)


def _matches(patterns: Sequence[str], *names: str) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns for name in names)


def accepts(zone: ZoneSettings, rel: str) -> bool:
    """Does this zone take the file at `rel` (a path relative to the zone)?"""
    parts = rel.split("/")
    if not zone.recursive and len(parts) > 1:
        return False
    if _matches(zone.exclude, rel, *parts):
        return False
    return _matches(zone.include, rel, parts[-1])


def _skipped_dir(zone: ZoneSettings, path: Path, rel: str) -> bool:
    if path in (zone.done_dir, zone.quarantine_dir):
        return True
    return _matches(zone.exclude, rel, rel.rsplit("/", 1)[-1])


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError as exc:
        log.warning("scan_failed", folder=str(folder), error=str(exc))
        return []


_KINDS = ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISBLK, "a device"), (stat.S_ISCHR, "a device"))


def kind_of(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def scan(zone: ZoneSettings, start: Path | None = None,
         skipped: list[tuple[str, str]] | None = None) -> Iterator[tuple[str, Version]]:
    """Every regular file the zone accepts, below `start` (default: the whole zone). Links,
    FIFOs, sockets and devices are never opened or followed; they go to `skipped`."""
    stack = [start or zone.path]
    while stack:
        for entry in _entries(stack.pop()):
            path = Path(entry.path)
            rel = path.relative_to(zone.path).as_posix()
            if entry.is_dir(follow_symlinks=False):
                if zone.recursive and not _skipped_dir(zone, path, rel):
                    stack.append(path)
            elif not accepts(zone, rel):
                continue
            elif entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                yield rel, (st.st_size, st.st_mtime_ns)
            elif skipped is not None:
                skipped.append((rel, kind_of(entry.stat(follow_symlinks=False).st_mode)))


def _version(path: Path) -> Version | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


class ZoneWatcher:
    """Candidates, settling and discovery for one zone."""

    def __init__(self, zone: ZoneSettings, ledger: Ledger) -> None:
        self.zone = zone
        self.ledger = ledger
        self.settler = Settler(zone.settle_ms / 1000)
        self.known: dict[str, Version] = {}  # discovered versions still in the zone
        self._reported: set[str] = set()  # special files already logged

    def report_skipped(self, skipped: list[tuple[str, str]]) -> None:
        """One log line per special file, the first time it is seen."""
        for rel, kind in skipped:
            if rel not in self._reported:
                self._reported.add(rel)
                log.warning("file_skipped", zone=self.zone.name, path=rel, reason=f"{kind}; "
                            "only regular files are taken and links are never followed")

    def offer(self, rel: str, version: Version) -> None:
        """A file seen by a scan or an event; ignored if this version is already recorded."""
        if self.known.get(rel) != version:
            self.settler.observe(rel, version, time.time())

    async def rescan(self) -> None:
        skipped: list[tuple[str, str]] = []
        found = dict(await asyncio.to_thread(lambda: list(scan(self.zone, None, skipped))))
        self.report_skipped(skipped)
        self.known = {rel: v for rel, v in self.known.items() if found.get(rel) == v}
        for rel, version in found.items():
            self.offer(rel, version)

    def _ready(self, versions: dict[str, Version | None]) -> list[Entry]:
        """Feed fresh stats to the settler; returns the files that are ready."""
        ready, now = [], time.time()
        for rel, found in versions.items():
            if found is None:
                self.settler.forget(rel)
            elif self.settler.observe(rel, found, now):
                ready.append(Entry(rel, *found))
        return ready

    async def settle(self) -> int:
        """One settling pass; ready files go to the ledger. Returns how many are still waiting."""
        if not len(self.settler):
            return 0
        rels = self.settler.pending()
        versions = await asyncio.to_thread(lambda: {r: _version(self.zone.path / r) for r in rels})
        ready = self._ready(versions)  # on the loop thread, like every other settler change
        if ready:
            await self.ledger.discover(self.zone.name, ready)
            for entry in ready:
                self.settler.forget(entry.rel_path)
                self.known[entry.rel_path] = (entry.size_bytes, entry.mtime_ns)
        return len(self.settler)

    def on_event(self, path: Path, deleted: bool) -> None:
        """A watchfiles event for `path` inside this zone."""
        if path.is_relative_to(self.zone.done_dir) or path.is_relative_to(
                self.zone.quarantine_dir):
            return
        rel = path.relative_to(self.zone.path).as_posix()
        if deleted:
            self.settler.forget(rel)
            self.known.pop(rel, None)
        elif path.is_dir() and not path.is_symlink():
            skipped: list[tuple[str, str]] = []
            for sub, version in scan(self.zone, path, skipped):
                self.offer(sub, version)
            self.report_skipped(skipped)
        elif accepts(self.zone, rel):
            self._offer_path(path, rel)

    def _offer_path(self, path: Path, rel: str) -> None:
        try:
            st = path.lstat()
        except OSError:
            return
        if stat.S_ISREG(st.st_mode):
            self.offer(rel, (st.st_size, st.st_mtime_ns))
        else:
            self.report_skipped([(rel, kind_of(st.st_mode))])

    @property
    def tick_s(self) -> float:
        return min(0.5, max(0.05, self.zone.settle_ms / 4000))


class Watcher:
    """All zones: scan, then (in daemon mode) events, settling and periodic rescans."""

    def __init__(self, zones: Sequence[ZoneSettings], ledger: Ledger, rescan_s: float) -> None:
        self.zones = [ZoneWatcher(z, ledger) for z in zones]
        self.rescan_s = rescan_s

    async def scan_all(self) -> None:
        for zone in self.zones:
            await zone.rescan()

    async def settle_all(self) -> int:
        return sum([await zone.settle() for zone in self.zones])

    async def run_once(self, stop: asyncio.Event | None = None) -> None:
        """Scan, then settle until every file found is recorded (or gone), or `stop` is set."""
        stop = stop or asyncio.Event()
        await self.scan_all()
        # settling is polling by nature: stat until unchanged
        while not stop.is_set() and await self.settle_all():
            await _sleep_unless(stop, min(z.tick_s for z in self.zones))

    async def run(self, stop: asyncio.Event, watching: asyncio.Event | None = None) -> None:
        """Daemon mode: watch every zone until `stop` is set; `watching` is set once every
        zone is watched and scanned (a file dropped after that cannot be missed)."""
        async with asyncio.TaskGroup() as group:
            for zone in self.zones:
                group.create_task(self._watch(zone, stop))
            await asyncio.sleep(0.1)  # each watch is set up in its task's first step
            await self.scan_all()  # what arrived before the watches were up
            if watching is not None:
                watching.set()
            group.create_task(self._settle_loop(stop))
            group.create_task(self._rescan_loop(stop))

    async def _watch(self, zone: ZoneWatcher, stop: asyncio.Event) -> None:
        """Watch one zone; if its folder goes away, say so, wait for it, and watch it again."""
        while not stop.is_set() and zone.zone.watch != "rescan":
            if not zone.zone.path.is_dir():
                await self._wait_for_folder(zone, stop)
                continue
            try:
                await self._watch_folder(zone, _StopOrGone(stop))
            except OSError as exc:  # the folder vanished while the watch was being set up
                log.warning("watch_failed", zone=zone.zone.name, error=str(exc))
                await _sleep_unless(stop, 1.0)

    async def _watch_folder(self, zone: ZoneWatcher, until: _StopOrGone) -> None:
        from watchfiles import Change, awatch

        async for changes in awatch(zone.zone.path, watch_filter=None, debounce=50, step=20,
                                    stop_event=until, recursive=zone.zone.recursive,
                                    force_polling=zone.zone.watch == "poll" or None,
                                    ignore_permission_denied=True):
            for change, raw in changes:
                path = Path(raw)
                if path.is_relative_to(zone.zone.path) and path != zone.zone.path:
                    zone.on_event(path, deleted=change == Change.deleted)
            if not zone.zone.path.is_dir():
                until.set()

    async def _wait_for_folder(self, zone: ZoneWatcher, stop: asyncio.Event) -> None:
        log.error("zone_missing", zone=zone.zone.name, path=str(zone.zone.path),
                  effect="nothing is taken from this zone until its folder is back")
        while not zone.zone.path.is_dir():
            if await _sleep_unless(stop, 1.0):
                return
        log.warning("zone_back", zone=zone.zone.name, path=str(zone.zone.path))
        await zone.rescan()

    async def _settle_loop(self, stop: asyncio.Event) -> None:
        tick = min(z.tick_s for z in self.zones)
        while not stop.is_set():
            try:
                await self.settle_all()
            except Exception as exc:  # the database may be away; the next tick tries again
                log.warning("settle_failed", error=str(exc))
            await _sleep_unless(stop, tick)

    async def _rescan_loop(self, stop: asyncio.Event) -> None:
        while not await _sleep_unless(stop, self.rescan_s):
            await self.scan_all()


class _StopOrGone:
    """A stop event for one zone's watch: the daemon stops, or the zone folder went away."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.gone = False

    def is_set(self) -> bool:
        return self.stop.is_set() or self.gone

    def set(self) -> None:
        self.gone = True

    async def wait(self) -> None:
        await self.stop.wait()


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True if `stop` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
