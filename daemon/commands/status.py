"""`status`: what the ledger says about each zone, and what the daemons say of their
dependencies, in four queries.

Counts of files by state (the next stage while in flight, the outcome once done), and what an
operator asks next: which file has waited longest, what went wrong last, and how fast files go
through. Per dependency (objects, postgres, mlflow, state): up or down as the running daemons'
breakers see it (daemon/health.py), its last error, since when, and how many files wait for
it. A table on a terminal, one JSON document with `--json`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from daemon.commands import FAILURES, explain, fail, iso, local_time, one_line, printable
from daemon.config import Settings
from daemon.database import Database, sql
from daemon.errors import EXIT_OK
from daemon.health import STALE_S
from daemon.ledger import state_of
from daemon.logs import redact_text
from daemon.sessions import DEPENDENCIES

STATES = ("hash", "upload", "store", "track", "finish", "stored", "duplicate", "vanished",
          "superseded", "quarantined")
DETAIL_INDENT = " " * 4
# the ledger stage whose files wait for each dependency (Postgres: every stage, but `store`
# is where files pile up; `state`: the done and quarantine folders)
WAITS_AT = {"objects": "upload", "postgres": "store", "mlflow": "track", "state": "finish"}


def _empty_zone() -> dict[str, Any]:
    return {"states": {}, "bytes": 0, "last_update": None, "oldest_waiting": None,
            "last_error": None, "throughput": throughput(0, 0)}


def summarize(settings: Settings, rows: Sequence[Mapping[str, Any]],
              details: Sequence[Mapping[str, Any]] = (),
              health: Sequence[Mapping[str, Any]] = (),
              waiting: Mapping[str, int] | None = None) -> dict[str, Any]:
    """{"zones": {zone: {"states": {state: files}, "bytes", "last_update", "oldest_waiting",
    "last_error", "throughput"}}, "dependencies": {name: ...}}: every configured zone, and any
    other the ledger knows; every dependency (see `dependency`)."""
    zones: dict[str, Any] = {z.name: _empty_zone() for z in settings.zones}
    for row in rows:
        zone = zones.setdefault(row["zone"], _empty_zone())
        state = state_of(row["stage"], row["outcome"])
        zone["states"][state] = zone["states"].get(state, 0) + int(row["files"])
        zone["bytes"] += int(row["bytes"])
        last = iso(row["last_update"])
        zone["last_update"] = max(filter(None, (zone["last_update"], last)), default=None)
    for detail in details:
        zones.setdefault(detail["zone"], _empty_zone()).update(zone_details(detail))
    return {"zones": zones, "dependencies": {
        name: dependency([r for r in health if r["dependency"] == name],
                         (waiting or {}).get(name, 0)) for name in DEPENDENCIES}}


def unreachable(settings: Settings, exc: BaseException) -> dict[str, Any]:
    """`status --json` when this command itself cannot reach Postgres: the ledger and the
    daemons' reports are there, so only Postgres is known (down, as seen from here)."""
    dependencies = summarize(settings, [])["dependencies"]
    message = explain(exc, settings)[0].split("\n")[0]  # the hint goes to stderr
    dependencies["postgres"].update(up=False, last_error=message)
    return {"zones": {}, "dependencies": dependencies}


def dependency(rows: Sequence[Mapping[str, Any]], waiting_files: int) -> dict[str, Any]:
    """One dependency from the `health_rows` of the live daemons (ordered by `since`): down if
    any of them finds it down (since the earliest), else up since the latest change; `up` is
    None when no running daemon reports it. `last_error` stays after a recovery."""
    down = [row for row in rows if not row["up"]]
    row = down[0] if down else (rows[-1] if rows else None)
    if row is None:
        return {"up": None, "last_error": None, "since": None, "for_s": None, "daemons": 0,
                "waiting_files": waiting_files}
    error = row["error"] or next((r["error"] for r in reversed(rows) if r["error"]), None)
    return {"up": not down, "last_error": redact_text(error) if error else None,
            "since": iso(row["since"]), "for_s": round(float(row["for_s"]), 1),
            "daemons": len(rows), "down_in": len(down), "waiting_files": waiting_files}


def zone_details(row: Mapping[str, Any]) -> dict[str, Any]:
    """The `status_details` row of one zone as the JSON keys `status --json` shows."""
    waiting = error = None
    if row["waiting_path"] is not None:
        waiting = {"path": row["waiting_path"], "since": iso(row["waiting_since"]),
                   "age_s": round(float(row["waiting_s"]), 1)}
    if row["error"] is not None:
        error = {"message": redact_text(row["error"]), "path": row["error_path"],
                 "at": iso(row["error_at"]), "state": row["error_stage"]}
    return {"oldest_waiting": waiting, "last_error": error,
            "throughput": throughput(int(row["finished_5m"]), int(row["finished_1h"]))}


def throughput(last_5m: int, last_1h: int) -> dict[str, float]:
    """Files that went all the way (stored or duplicate) lately, and the rate per minute."""
    return {"finished_5m": last_5m, "finished_1h": last_1h,
            "per_minute_5m": round(last_5m / 5, 2), "per_minute_1h": round(last_1h / 60, 2)}


def human_age(seconds: float) -> str:
    """`42 s`, `3 min 5 s`, `2 h 10 min`, `3 d 4 h`: two units are enough to act on."""
    whole = int(seconds)
    for unit, size, small, small_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60),
                                          ("min", 60, "s", 1)):
        if whole >= size:
            rest = (whole % size) // small_size
            return f"{whole // size} {unit}" + (f" {rest} {small}" if rest else "")
    return f"{whole} s"


def render_counts(summary: dict[str, Any]) -> list[str]:
    lines = [f"{'zone':<16}" + "".join(f"{s:>12}" for s in STATES)]
    for name, zone in summary["zones"].items():
        counts = "".join(f"{zone['states'].get(s, 0):>12}" for s in STATES)
        lines.append(f"{name:<16}{counts}")
    return lines


def render_zone(name: str, zone: dict[str, Any]) -> list[str]:
    """The lines under the counts for one zone: oldest waiting, last error, throughput."""
    waiting, error, rate = zone["oldest_waiting"], zone["last_error"], zone["throughput"]
    lines = [f"{name}:"]
    lines.append(f"{DETAIL_INDENT}oldest waiting  " + (
        f"{printable(waiting['path'])} (waiting {human_age(waiting['age_s'])})" if waiting
        else "none: nothing is in flight"))
    lines.append(f"{DETAIL_INDENT}last error      " + (
        f"{error['at'] or '-'} {printable(error['path'])} ({error['state']}): "
        f"{one_line(error['message'], 160)}" if error else "none"))
    lines.append(f"{DETAIL_INDENT}finished        {rate['finished_5m']} in 5 min "
                 f"({rate['per_minute_5m']:g}/min), {rate['finished_1h']} in 1 h "
                 f"({rate['per_minute_1h']:g}/min)")
    return lines


def render_dependencies(summary: dict[str, Any]) -> list[str]:
    """One line per dependency: up, DOWN or unknown, since when, files waiting, last error."""
    lines = [f"{'dependency':<12}{'state':<9}{'since':<32}{'waiting':>8}  last error"]
    for name, dep in summary.get("dependencies", {}).items():
        state = {None: "unknown", True: "up", False: "DOWN"}[dep["up"]]
        since = "-" if dep["since"] is None else (
            f"{local_time(datetime.fromisoformat(dep['since']))} ({human_age(dep['for_s'])})")
        error = one_line(dep["last_error"], 120) if dep["last_error"] else (
            "none" if dep["up"] is not None else "no running daemon reports it")
        lines.append(f"{name:<12}{state:<9}{since:<32}{dep['waiting_files']:>8}  {error}")
    return lines


def render_table(summary: dict[str, Any]) -> str:
    lines = [*render_counts(summary), "", *render_dependencies(summary)]
    for name, zone in summary["zones"].items():
        lines.extend(["", *render_zone(name, zone)])
    return "\n".join(lines)


async def run(settings: Settings, as_json: bool) -> int:
    try:
        async with Database(settings) as db:
            rows = await db.pool.fetch(sql("status"))
            names = sorted({z.name for z in settings.zones} | {r["zone"] for r in rows})
            details = await db.pool.fetch(sql("status_details"), names)
            health = await db.pool.fetch(sql("health_rows"), STALE_S)
            waiting = await db.pool.fetch(sql("health_waiting"), list(WAITS_AT),
                                          list(WAITS_AT.values()))
    except FAILURES as exc:  # Postgres unreachable: said on stderr, and in the JSON
        if as_json:
            print(json.dumps(unreachable(settings, exc), indent=2, ensure_ascii=False))
        return fail(exc, settings, "status")
    summary = summarize(settings, rows, details, health,
                        {r["dependency"]: int(r["files"]) for r in waiting})
    print(json.dumps(summary, indent=2, ensure_ascii=False) if as_json
          else render_table(summary))
    return EXIT_OK
