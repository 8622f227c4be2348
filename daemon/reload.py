"""Reloading the configuration on SIGHUP: zones change at once, other settings at the next start.

A reload that parses and validates replaces the zones: the watcher is restarted on the new set,
the ledger claims only their files, and files already in flight finish under the rules they
started with (their `Job` holds their zone). A removed zone's settings are kept for its files
still on their way; its files not yet stored stay in the ledger until the zone is back. Changes
to anything but `zones` (storage, database, MLflow, ...) would need new clients: they are
reported and take effect at the next start. An invalid file is refused and nothing changes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from daemon import config
from daemon.config import Settings, ZoneSettings
from daemon.errors import ConfigError
from daemon.logs import get_logger
from daemon.stages import Env
from daemon.watcher import Watcher

log = get_logger("dropzone.reload")


@dataclass(frozen=True)
class Plan:
    """What a new configuration changes."""

    added: list[str]
    removed: list[str]
    changed: list[str]
    need_restart: list[str]  # top-level sections other than `zones` that differ

    @property
    def zones_changed(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def plan(old: Settings, new: Settings) -> Plan:
    before = {z.name: z for z in old.zones}
    after = {z.name: z for z in new.zones}
    sections = [name for name in Settings.model_fields
                if name != "zones" and getattr(old, name) != getattr(new, name)]
    return Plan(added=[n for n in after if n not in before],
                removed=[n for n in before if n not in after],
                changed=[n for n in after if n in before and after[n] != before[n]],
                need_restart=sections)


def apply(env: Env, zones: tuple[ZoneSettings, ...]) -> None:
    """Make `zones` the daemon's zones; keep the settings of removed ones for their files."""
    for zone in env.settings.zones:
        env.retired[zone.name] = zone
    for zone in zones:
        env.retired.pop(zone.name, None)
    env.settings = env.settings.model_copy(update={"zones": zones})
    env.ledger.zones = [zone.name for zone in zones]


async def load(path: Path | None) -> Settings | None:
    """The new settings, or None (and a log line saying why) if the file is refused."""
    try:
        return await asyncio.to_thread(config.load, path)
    except ConfigError as exc:
        log.error("reload_refused", error=str(exc), effect="the running configuration is kept")
        return None


def report(result: Plan) -> None:
    if result.need_restart:
        log.warning("reload_needs_restart", sections=result.need_restart,
                    effect="these settings take effect at the next start")
    log.info("config_reloaded", added=result.added, removed=result.removed,
             changed=result.changed)


class Watching:
    """The zones' watcher, started again on the current zones when a reload changes them."""

    def __init__(self, env: Env, rescan_s: float) -> None:
        self.env = env
        self.rescan_s = rescan_s
        self.up = asyncio.Event()  # this generation's zones are all watched and scanned
        self._restart = asyncio.Event()
        self._started = asyncio.Event()  # a generation began (with a new `up`)
        self._generations = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._restart.clear()
            if self._generations:  # the first one uses the `up` made with this object
                self.up = asyncio.Event()
            self._generations += 1
            self._started.set()
            until = asyncio.Event()
            watcher = Watcher(self.env.settings.zones, self.env.ledger, self.rescan_s)
            async with asyncio.TaskGroup() as group:
                group.create_task(watcher.run(until, self.up))
                await first_of(stop, self._restart)
                until.set()

    async def rewatch(self) -> None:
        """Watch the current zones anew; returns once every one of them is watched."""
        self._started.clear()
        self._restart.set()
        await self._started.wait()
        await self.up.wait()


async def first_of(*events: asyncio.Event) -> None:
    """Wait until any of `events` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
