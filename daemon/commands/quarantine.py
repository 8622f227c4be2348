"""`quarantine list | show | retry`: what was quarantined and why, and putting files back.

The ledger knows each quarantined file (its row, with the reason in `last_error`); the zone's
quarantine folder holds the file and its `<name>.error.json`. A name already taken there got
`.1`, `.2`, ... before its suffix, so the copy of a row is found by the `ledger_id` in the
reports beside it, else by its plain name.

`retry` moves the file back to its place in the zone (never over a file that is there), then
resets its ledger row: the same version (size and mtime survive the move) starts over at hash
with a fresh attempt budget, since discovering a version the ledger knows does nothing. A file
changed while in quarantine is a new version: its old row ends `superseded` and the watcher
takes the new one as any new file. Only then is the `.error.json` removed.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from daemon.commands import FAILURES, fail, iso, local_time, one_line, printable
from daemon.config import Settings, ZoneSettings
from daemon.database import Database, sql
from daemon.errors import EXIT_OK, EXIT_QUARANTINED
from daemon.files import is_version
from daemon.ledger import FileRow, state_of
from daemon.logs import redact_text

REPORT_SUFFIX = ".error.json"
REASON_WIDTH = 100


@dataclass(frozen=True)
class Copy:
    """Where a quarantined file's copy and its report are; `file` None if the copy is gone."""

    expected: Path
    file: Path | None
    report: Path | None


def read_report(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _reports_near(expected: Path) -> list[Path]:
    """`name.error.json` and the `name.N.ext.error.json` that free names would give."""
    pattern = f"{glob.escape(expected.stem)}.*{glob.escape(expected.suffix)}{REPORT_SUFFIX}"
    near = sorted(expected.parent.glob(pattern)) if expected.parent.is_dir() else []
    return [Path(f"{expected}{REPORT_SUFFIX}"), *near]


def _is_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def find_copy(zone: ZoneSettings, row: FileRow) -> Copy:
    """The quarantined copy of `row`: the one whose report names its ledger id, else the file
    at its plain name (a report may have been deleted by hand)."""
    expected = zone.quarantine_dir / row.fs_path
    for report in _reports_near(expected):
        data = read_report(report)
        if data is not None and data.get("ledger_id") == row.id:
            file = Path(str(report).removesuffix(REPORT_SUFFIX))
            return Copy(expected, file if _is_file(file) else None, report)
    return Copy(expected, expected if _is_file(expected) else None, None)


async def fetch_rows(pool: asyncpg.Pool, name: str, *args: Any) -> list[FileRow]:
    return [FileRow.from_record(r) for r in await pool.fetch(sql(name), *args)]


# -- list -------------------------------------------------------------------------------------

def list_entry(row: FileRow) -> dict[str, Any]:
    return {"id": row.id, "zone": row.zone, "path": row.rel_path, "when": iso(row.updated_at),
            "attempts": row.attempts, "reason": redact_text(row.last_error or "")}


def render_list(rows: Sequence[FileRow]) -> str:
    lines = [f"{'id':>8}  {'zone':<12} {'when':<19}  {'path':<32} reason"]
    for row in rows:
        lines.append(f"{row.id:>8}  {row.zone:<12} {local_time(row.updated_at):<19}  "
                     f"{printable(row.rel_path):<32} "
                     f"{one_line(redact_text(row.last_error or ''), REASON_WIDTH)}")
    return "\n".join(lines)


async def list_command(settings: Settings, zone: str | None, as_json: bool) -> int:
    try:
        async with Database(settings) as db:
            rows = await fetch_rows(db.pool, "quarantined_files", zone)
    except FAILURES as exc:
        return fail(exc, settings, "quarantine list")
    if as_json:
        for row in rows:
            print(json.dumps(list_entry(row), ensure_ascii=False))
    elif rows:
        print(render_list(rows))
    else:
        print("no quarantined files" + (f" in zone {zone}" if zone else ""), file=sys.stderr)
    return EXIT_OK


# -- show -------------------------------------------------------------------------------------

def ledger_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """Every column of the row as JSON-ready values (a name that is not UTF-8 escaped)."""
    values = dict(record)
    raw = values.get("rel_raw")
    values["rel_raw"] = bytes(raw).decode("utf-8", "backslashreplace") if raw else None
    values["last_error"] = redact_text(values["last_error"]) if values["last_error"] else None
    values["stage_ms"] = json.loads(values["stage_ms"] or "{}")
    values["state"] = state_of(values["stage"], values["outcome"] or "")
    return json.loads(json.dumps(values, default=str))  # type: ignore[no-any-return]


def describe_copy(settings: Settings, row: FileRow) -> dict[str, Any]:
    """Where the file sits now and what its `.error.json` says."""
    if row.zone not in {z.name for z in settings.zones}:
        return {"quarantined_file": None, "error_report_path": None, "error_report": None,
                "note": f"zone {row.zone} is not in this config: its quarantine folder is unknown"}
    copy = find_copy(settings.zone(row.zone), row)
    note = None if copy.file else f"the quarantined copy is gone (looked for {copy.expected})"
    return {"quarantined_file": str(copy.file) if copy.file else None,
            "error_report_path": str(copy.report) if copy.report else None,
            "error_report": _redacted(read_report(copy.report)) if copy.report else None,
            "note": note}


def _redacted(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """A report as written, any secret in it hidden (a reason may quote a URL)."""
    if report is None:
        return None
    return json.loads(redact_text(json.dumps(report)))  # type: ignore[no-any-return]


def render_show(ledger: dict[str, Any], where: dict[str, Any]) -> str:
    lines = [f"file {ledger['id']} in zone {ledger['zone']}: {printable(ledger['rel_path'])}",
             f"state        {ledger['state']} after {ledger['attempts']} attempt(s), last "
             f"change {ledger['updated_at']}",
             f"reason       {one_line(ledger['last_error']) or '-'}",
             f"file now     {printable(where['quarantined_file'] or '-')}"]
    lines += [f"note         {where['note']}"] if where["note"] else []
    lines.append(f"error.json   {printable(where['error_report_path'] or '-')}")
    if where["error_report"] is not None:
        report = json.dumps(where["error_report"], indent=2, ensure_ascii=False)
        lines += [f"  {line}" for line in report.splitlines()]
    lines.append("ledger row")
    lines += [f"  {name:<16} {printable(str(value))}" for name, value in ledger.items()]
    return "\n".join(lines)


async def show_command(settings: Settings, file_id: int, as_json: bool) -> int:
    try:
        async with Database(settings) as db:
            records = await db.pool.fetch(sql("files_by_id"), [file_id])
    except FAILURES as exc:
        return fail(exc, settings, "quarantine show")
    if not records:
        print(f"dropzone: no file with id {file_id} in the ledger (see `quarantine list`)",
              file=sys.stderr)
        return EXIT_QUARANTINED
    ledger = ledger_fields(records[0])
    where = await asyncio.to_thread(describe_copy, settings, FileRow.from_record(records[0]))
    print(json.dumps({"ledger": ledger, **where}, indent=2, ensure_ascii=False) if as_json
          else render_show(ledger, where))
    return EXIT_OK


# -- retry ------------------------------------------------------------------------------------

class NotBack(Exception):
    """This file could not be put back; the message says why, in plain words."""


def move_no_replace(source: Path, target: Path) -> None:
    """Move `source` to `target` unless something is there. A hard link refuses an existing
    name atomically; across filesystems (or where links are refused) check, then move."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(target):
            raise FileExistsError(target) from None
        shutil.move(source, target)
        return
    try:
        source.unlink()
    except OSError:
        target.unlink()  # as it was: one name, in quarantine
        raise


def put_back(zone: ZoneSettings, row: FileRow) -> tuple[Copy, Path]:
    """Move the quarantined copy to its place in the zone; returns (copy, place)."""
    copy, target = find_copy(zone, row), zone.path / row.fs_path
    if copy.file is None and left_in_place(copy) and target.is_file():
        return copy, target  # it could not leave the zone: nothing to move
    if copy.file is None:
        raise NotBack(f"the quarantined copy is gone (looked for {copy.expected}); nothing to "
                      "put back: if you still have the file, drop it into the zone again")
    try:
        move_no_replace(copy.file, target)
    except FileExistsError:
        raise NotBack(f"a file is already at {target}; not overwritten: move it away, then "
                      "retry") from None
    except OSError as exc:
        raise NotBack(f"cannot move {copy.file} to {target}: {exc.strerror or exc}") from None
    return copy, target


def left_in_place(copy: Copy) -> bool:
    """The report says the file stayed in its zone (it could not be moved out)."""
    report = read_report(copy.report) if copy.report is not None else None
    return bool(report and report.get("left_in_place"))


def undo(copy: Copy, target: Path) -> None:
    """The ledger could not be updated: the file goes back to quarantine, as it was."""
    if copy.file is not None:
        move_no_replace(target, copy.file)


async def requeue(pool: asyncpg.Pool, row: FileRow, target: Path) -> str:
    """Reset the row for the file now back at `target`; returns what will happen to it."""
    same = await asyncio.to_thread(is_version, target, (row.size_bytes, row.mtime_ns))
    query = "requeue_quarantined" if same else "supersede_quarantined"
    if await pool.fetchval(sql(query), row.id) is None:
        raise NotBack("its ledger row is no longer quarantined (retried meanwhile?)")
    return ("back in the zone, to be processed again" if same else
            "back in the zone; it changed in quarantine, so it is processed as a new version")


async def retry_one(pool: asyncpg.Pool, zone: ZoneSettings, row: FileRow) -> str:
    """Put one file back and reset its row; raises NotBack with the reason if it cannot."""
    copy, target = await asyncio.to_thread(put_back, zone, row)
    try:
        outcome = await requeue(pool, row, target)
    except BaseException:
        await asyncio.to_thread(undo, copy, target)
        raise
    if copy.report is not None:
        await asyncio.to_thread(copy.report.unlink, missing_ok=True)
    return f"{outcome} ({target})"


def selection_problem(settings: Settings, row: FileRow | None, file_id: int,
                      zone: str | None) -> str | None:
    """Why the file `file_id` cannot be retried as asked, or None."""
    if row is None:
        return "no such file in the ledger (see `quarantine list`)"
    if row.stage != "quarantined":
        return f"not quarantined (it is {state_of(row.stage, row.outcome or '')})"
    if zone and row.zone != zone:
        return f"in zone {row.zone}, not {zone}"
    if row.zone not in {z.name for z in settings.zones}:
        return f"zone {row.zone} is not in this config"
    return None


async def _selected(pool: asyncpg.Pool, ids: Sequence[int], zone: str | None,
                    every: bool) -> list[tuple[int, FileRow | None]]:
    if every:
        return [(row.id, row) for row in await fetch_rows(pool, "quarantined_files", zone)]
    found = {row.id: row for row in await fetch_rows(pool, "files_by_id", list(ids))}
    return [(file_id, found.get(file_id)) for file_id in dict.fromkeys(ids)]


def _label(file_id: int, row: FileRow | None) -> str:
    return f"{file_id} {row.zone}/{printable(row.rel_path)}" if row else str(file_id)


async def _retry_rows(settings: Settings, pool: asyncpg.Pool, chosen: Sequence[
        tuple[int, FileRow | None]], zone: str | None) -> int:
    """One line per file; returns how many went back."""
    back = 0
    for file_id, row in chosen:
        problem = selection_problem(settings, row, file_id, zone)
        try:
            if problem is not None or row is None:
                raise NotBack(problem or "")
            print(f"{_label(file_id, row)}: {await retry_one(pool, settings.zone(row.zone), row)}")
            back += 1
        except (NotBack, OSError) as exc:
            print(f"{_label(file_id, row)}: not put back: {exc}")
    return back


async def retry_command(settings: Settings, ids: Sequence[int], zone: str | None,
                        every: bool) -> int:
    try:
        async with Database(settings) as db:
            chosen = await _selected(db.pool, ids, zone, every)
            back = await _retry_rows(settings, db.pool, chosen, zone)
    except FAILURES as exc:
        return fail(exc, settings, "quarantine retry")
    print(summary(back, len(chosen)))
    return EXIT_OK if back == len(chosen) else EXIT_QUARANTINED


def summary(back: int, chosen: int) -> str:
    if not chosen:
        return "no quarantined files to retry"
    text = f"{back} of {chosen} file(s) put back"
    if back:
        text += "; a running daemon takes them at once, or run `python -m daemon --once`"
    return text + ("" if back == chosen else f"; {chosen - back} could not be (see above)")
