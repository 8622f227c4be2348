"""`status`: what the ledger says about each zone, in two queries.

Counts of files by state (the next stage while in flight, the outcome once done), and what an
operator asks next: which file has waited longest, what went wrong last, and how fast files go
through. A table on a terminal, one JSON document with `--json`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from daemon.commands import FAILURES, fail, iso, one_line, printable
from daemon.config import Settings
from daemon.database import Database, sql
from daemon.ledger import state_of
from daemon.logs import redact_text
from daemon.supervisor import EXIT_OK

STATES = ("hash", "upload", "store", "track", "finish", "stored", "duplicate", "vanished",
          "superseded", "quarantined")
DETAIL_INDENT = " " * 4


def _empty_zone() -> dict[str, Any]:
    return {"states": {}, "bytes": 0, "last_update": None, "oldest_waiting": None,
            "last_error": None, "throughput": throughput(0, 0)}


def summarize(settings: Settings, rows: Sequence[Mapping[str, Any]],
              details: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """{"zones": {zone: {"states": {state: files}, "bytes", "last_update", "oldest_waiting",
    "last_error", "throughput"}}}: every configured zone, and any other the ledger knows."""
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
    return {"zones": zones}


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


def render_table(summary: dict[str, Any]) -> str:
    lines = render_counts(summary)
    for name, zone in summary["zones"].items():
        lines.extend(["", *render_zone(name, zone)])
    return "\n".join(lines)


async def run(settings: Settings, as_json: bool) -> int:
    try:
        async with Database(settings) as db:
            rows = await db.pool.fetch(sql("status"))
            names = sorted({z.name for z in settings.zones} | {r["zone"] for r in rows})
            details = await db.pool.fetch(sql("status_details"), names)
    except FAILURES as exc:
        return fail(exc, settings, "status")
    summary = summarize(settings, rows, details)
    print(json.dumps(summary, indent=2, ensure_ascii=False) if as_json
          else render_table(summary))
    return EXIT_OK
