"""Watcher: finds files that are ready in each zone and records them in the ledger.

Three ways in, one way out: a scan at start (what arrived while the daemon was down), watchfiles
events while it runs, and a periodic rescan (events can be lost; some filesystems send none).
Every candidate goes through the settler, which calls a file ready once its size and mtime have
not changed for the zone's `settle_ms`; ready files are handed to `ledger.discover`. The watcher
knows nothing of S3 or MLflow. Symlinks are never followed and only regular files are taken.

What real machines do to a watch, and what happens then:

* The watch breaks (watchfiles cannot decode a name that is not UTF-8, as SMB shares give; the
  kernel is out of inotify instances; anything else): the zone logs it once, rescans at once (so
  the file that broke the watch is still taken), and watches again after a backoff that grows
  while the watch keeps failing. The daemon stays up.
* The zone folder is replaced. Its identity (st_dev, st_ino, from lstat) is recorded when the
  folder is adopted, and every scan, settling pass and watch step checks it. A symlink at the
  zone's path is never followed, not even at start: nothing is taken until a real folder is back.
  A real folder that took the adopted one's place is adopted after one `zone_replaced` line (the
  operator may well have recreated it); the old folder, wherever it went, is left alone.
* The inotify watch limit is reached. notify then stops adding watches without a word (watchfiles'
  `ignore_permission_denied` swallows its MaxFilesWatch error, and watches for folders made later
  fail silently), so a probe asks whether one more watch can be added. If not, the zone says so
  once, with the sysctl to raise, and is rescanned every few seconds while the limit binds.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.config import ZoneSettings
from daemon.ledger import Entry, Ledger
from daemon.logs import get_logger

if TYPE_CHECKING:
    from watchfiles.main import FileChange

log = get_logger("dropzone.watcher")
Version = tuple[int, int]
Identity = tuple[int, int]  # (st_dev, st_ino) of a zone folder

BACKOFF_S = 0.5  # the first wait before a broken watch is set up again; doubles per failure
BACKOFF_MAX_S = 30.0
HEALTHY_S = 60.0  # a watch that ran this long before failing starts the backoff afresh
STEP_MS = 1000  # the watch hands back control at least this often, to check the folder
PROBE_EVERY_S = 1.0  # how often the inotify watch limit is probed
REARM_EVERY_S = 60.0  # at most one new watch a minute when the limit seems to have gone
POLL_MIN_S = 2.0  # rescans of a zone past the watch limit: this often at most, and
POLL_SHARE = 10  # ... no more than one tenth of the time


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


def _lstat(entry: os.DirEntry[str]) -> os.stat_result | None:
    """The entry's own stat, or None if it went away since the folder was listed."""
    try:
        return entry.stat(follow_symlinks=False)
    except OSError:
        return None


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
            elif not accepts(zone, rel) or (st := _lstat(entry)) is None:
                continue
            elif stat.S_ISREG(st.st_mode):
                yield rel, (st.st_size, st.st_mtime_ns)
            elif skipped is not None:
                skipped.append((rel, kind_of(st.st_mode)))


def _version(path: Path) -> Version | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


def folder_identity(path: Path) -> Identity | str:
    """(st_dev, st_ino) of the folder at `path` itself, or why there is none. lstat, not stat:
    a symlink put in the folder's place is seen as a symlink, never as its target."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return st.st_dev, st.st_ino
    return "a symlink" if stat.S_ISLNK(st.st_mode) else "not a folder"


_IN_CLOEXEC = 0o2000000
_IN_CREATE = 0x100
_IN_ONLYDIR = 0x01000000


@functools.cache
def _libc() -> ctypes.CDLL | None:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc if hasattr(libc, "inotify_add_watch") else None  # Linux only


def inotify_full(path: Path) -> bool:
    """True if no inotify watch can be added now: the user's watch limit is reached (ENOSPC).
    The probe holds its one watch for a moment, on an inotify instance of its own."""
    libc = _libc()
    fd = libc.inotify_init1(_IN_CLOEXEC) if libc is not None else -1
    if libc is None or fd < 0:  # out of inotify instances: the watch itself fails, and says so
        return False
    try:
        wd = libc.inotify_add_watch(fd, os.fsencode(path), _IN_CREATE | _IN_ONLYDIR)
        return bool(wd < 0 and ctypes.get_errno() == errno.ENOSPC)
    finally:
        os.close(fd)


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text())
    except (OSError, ValueError):
        return None


def inotify_limit() -> tuple[int | None, str]:
    """The watch limit that binds, and the sysctl settings that raise it: the machine's, and
    the user namespace's when that one is lower (in a container, say)."""
    machine = _read_int("/proc/sys/fs/inotify/max_user_watches")
    namespace = _read_int("/proc/sys/user/max_inotify_watches")
    if namespace is not None and (machine is None or namespace < machine):
        return namespace, "fs.inotify.max_user_watches={n} user.max_inotify_watches={n}"
    return machine, "fs.inotify.max_user_watches={n}"


def count_folders(path: Path) -> int:
    return sum(len(folders) for _, folders, _ in os.walk(path)) + 1


class WatchLimit:
    """Whether one zone's watch is short of inotify watches, by probing (see `inotify_full`).

    The probe runs at most once a second and only for zones watched by events. A limit that no
    longer binds asks for a new watch (notify does not add the watches it missed), at most once
    a minute, so a limit that comes and goes cannot make the zone set up its watch over and over.
    """

    def __init__(self, zone: ZoneSettings, probe: Callable[[Path], bool]) -> None:
        self.zone = zone
        self.probe = probe
        self.reached = False
        self.said = False
        self._probe_at = 0.0
        self._rearm_at = 0.0

    def check(self, now: float) -> str | None:
        """"reached" or "cleared" when the state changes, else None."""
        if self.zone.watch != "events" or now < self._probe_at:
            return None
        self._probe_at = now + PROBE_EVERY_S
        reached = self.probe(self.zone.path)
        if reached == self.reached or (self.reached and now < self._rearm_at):
            return None
        self.reached = reached
        if not reached:
            self._rearm_at = now + REARM_EVERY_S
        return "reached" if reached else "cleared"

    def rearmed(self) -> None:
        """A new watch was set up: probe at its first step."""
        self._probe_at = 0.0


class ZoneWatcher:
    """Candidates, settling and discovery for one zone."""

    def __init__(self, zone: ZoneSettings, ledger: Ledger,
                 probe: Callable[[Path], bool] = inotify_full) -> None:
        self.zone = zone
        self.ledger = ledger
        self.settler = Settler(zone.settle_ms / 1000)
        self.known: dict[str, Version] = {}  # discovered versions still in the zone
        self._reported: set[str] = set()  # special files already logged
        self.identity: Identity | None = None  # the folder adopted as this zone
        self.lost: str | None = None  # why nothing is taken from the zone now (said once)
        self.limit = WatchLimit(zone, probe)
        self._poll_at = 0.0
        self._failure: str | None = None  # the last watch failure logged

    def present(self) -> bool:
        """Is the zone's folder there, and the one adopted? A real folder is adopted (at first
        sight, or in place of one that went); anything else at the path is never followed."""
        found = folder_identity(self.zone.path)
        if isinstance(found, str):
            self._lose(found)
            return False
        if found != self.identity or self.lost is not None:
            self._adopt(found)
        return True

    def _lose(self, why: str) -> None:
        if why == self.lost:
            return
        self.lost = why
        self._forget_all()
        if why == "missing":
            log.error("zone_missing", zone=self.zone.name, path=str(self.zone.path),
                      effect="nothing is taken from this zone until its folder is back")
        else:
            log.error("zone_replaced", zone=self.zone.name, path=str(self.zone.path), now=why,
                      effect="nothing is taken from this zone until a real folder is at its "
                      "path; links are never followed")

    def _adopt(self, found: Identity) -> None:
        if self.lost is not None:
            log.warning("zone_back", zone=self.zone.name, path=str(self.zone.path))
        elif self.identity is not None:
            log.warning("zone_replaced", zone=self.zone.name, path=str(self.zone.path),
                        now="another folder", effect="the new folder is watched in the old "
                        "one's place; the old one is left alone, wherever it went")
        self.identity, self.lost = found, None
        self._forget_all()

    def _forget_all(self) -> None:
        """What was seen in a folder that is not the zone's any more says nothing of its files."""
        self.settler = Settler(self.zone.settle_ms / 1000)
        self.known = {}

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
        """Scan the whole zone, if its folder is the one adopted before and after the scan (if
        it was swapped meanwhile, what the scan found may be another folder's)."""
        if not self.present():
            return
        before, skipped = self.identity, list[tuple[str, str]]()
        found = dict(await asyncio.to_thread(lambda: list(scan(self.zone, None, skipped))))
        if not self.present() or self.identity != before:
            return
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
        if not len(self.settler) or not self.present():
            return 0
        before, rels = self.identity, self.settler.pending()
        versions = await asyncio.to_thread(lambda: {r: _version(self.zone.path / r) for r in rels})
        if not self.present() or self.identity != before:
            return len(self.settler)  # stats taken through a swapped folder are not used
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

    def watch_failed(self, exc: Exception, retry_s: float) -> None:
        """Say why the watch broke, once for each new reason."""
        while isinstance(exc, ExceptionGroup):  # the watch runs in a task group: name the cause
            exc = exc.exceptions[0]
        error = f"{type(exc).__name__}: {exc}"
        if error == self._failure:
            return
        self._failure = error
        cause = ("a file name that is not UTF-8 (the rescan takes the file)"
                 if "decode" in error else None)
        log.warning("watch_failed", zone=self.zone.name, error=error, cause=cause,
                    effect=f"the zone is rescanned now and watched again in {retry_s:g} s")

    async def tend(self) -> bool:
        """At every watch step: probe the watch limit, and rescan often while it binds.
        True when the watch should be set up again (the limit no longer binds)."""
        now = time.monotonic()
        change = self.limit.check(now)
        if change == "reached" and not self.limit.said:
            await self._say_limit()
        if self.limit.reached and now >= self._poll_at:
            await self.rescan()
            took_s = time.monotonic() - now
            self._poll_at = time.monotonic() + max(POLL_MIN_S, POLL_SHARE * took_s)
        return change == "cleared"

    async def _say_limit(self) -> None:
        self.limit.said = True
        limit, sysctls = inotify_limit()
        folders = await asyncio.to_thread(count_folders, self.zone.path)
        wanted = max(2 * (limit or 8192), (limit or 8192) + 2 * folders)
        log.warning("watch_limit_reached", zone=self.zone.name, limit=limit, folders=folders,
                    effect="folders past the limit have no inotify watch; the zone is rescanned "
                    "every few seconds while the limit binds",
                    fix=f"sysctl {sysctls.format(n=wanted)} (and in /etc/sysctl.d/ to keep it)")

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
                zone.present()  # adopt each zone's folder before its watch is set up
                group.create_task(self._watch(zone, stop))
            await asyncio.sleep(0.1)  # each watch is set up in its task's first step
            await self.scan_all()  # what arrived before the watches were up
            if watching is not None:
                watching.set()
            group.create_task(self._settle_loop(stop))
            group.create_task(self._rescan_loop(stop))

    async def _watch(self, zone: ZoneWatcher, stop: asyncio.Event) -> None:
        """Watch one zone until `stop`. Whatever breaks the watch, the zone is rescanned and
        watched again; a folder that went or was replaced is waited for, never followed."""
        failures, again = 0, False
        while not stop.is_set() and zone.zone.watch != "rescan":
            if not zone.present():
                await self._wait_for_folder(zone, stop)
                again = True
                continue
            started = time.monotonic()
            try:
                await self._watch_folder(zone, _StopOrGone(stop), rescan=again)
            except Exception as exc:  # e.g. watchfiles cannot decode a name that is not UTF-8
                healthy = time.monotonic() - started >= HEALTHY_S
                failures = 1 if healthy else failures + 1
                await self._recover(zone, exc, failures, stop)
            again = True

    async def _recover(self, zone: ZoneWatcher, exc: Exception, failures: int,
                       stop: asyncio.Event) -> None:
        """After a broken watch: say so, rescan at once (the file that broke the watch is still
        taken promptly), and wait before watching again, longer while it keeps failing."""
        retry_s = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (failures - 1))
        zone.watch_failed(exc, retry_s)
        await _rescan_safely(zone)
        await _sleep_unless(stop, retry_s)

    async def _watch_folder(self, zone: ZoneWatcher, until: _StopOrGone, rescan: bool) -> None:
        """One watch on the adopted folder, until `until` is set or the folder is not the
        adopted one any more. A watch set up again rescans once it is up: files that came
        while there was no watch are found."""
        from watchfiles import awatch

        armed, first = zone.identity, True
        zone.limit.rearmed()
        async for changes in awatch(zone.zone.path, watch_filter=None, debounce=50, step=20,
                                    stop_event=until, recursive=zone.zone.recursive,
                                    force_polling=zone.zone.watch == "poll" or None,
                                    ignore_permission_denied=True, rust_timeout=STEP_MS,
                                    yield_on_timeout=True):
            if not zone.present() or zone.identity != armed:
                until.set()
                continue
            if first and rescan:
                await zone.rescan()
            first = False
            _take(zone, changes)
            if await zone.tend():
                until.set()

    async def _wait_for_folder(self, zone: ZoneWatcher, stop: asyncio.Event) -> None:
        """The zone said why it is gone; it is watched (and rescanned) again once it is back."""
        while not zone.present():
            if await _sleep_unless(stop, 1.0):
                return

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
            for zone in self.zones:
                await _rescan_safely(zone)


def _take(zone: ZoneWatcher, changes: set[FileChange]) -> None:
    """Hand one batch of watchfiles changes to the zone."""
    from watchfiles import Change

    for change, raw in changes:
        path = Path(raw)
        if path.is_relative_to(zone.zone.path) and path != zone.zone.path:
            zone.on_event(path, deleted=change == Change.deleted)


async def _rescan_safely(zone: ZoneWatcher) -> None:
    """A rescan that cannot stop the daemon: whatever fails is logged, the next one tries."""
    try:
        await zone.rescan()
    except Exception as exc:
        log.warning("rescan_failed", zone=zone.zone.name, error=f"{type(exc).__name__}: {exc}")


class _StopOrGone:
    """A stop event for one zone's watch: the daemon stops, or the watch must end (its folder
    went or was replaced, or it is to be set up again)."""

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
