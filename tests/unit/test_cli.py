"""The command line's own logic: parsing, help, plain-word errors, exit codes, and what
`check`, `status` and `quarantine` render, without any server."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon import cli
from daemon.commands import explain, one_line, printable
from daemon.commands.check import (
    EXIT_CLOCK,
    EXIT_ZONE,
    FAIL,
    NA,
    OK,
    WARN,
    Line,
    clock_line,
    clock_verdict,
    exit_code,
    pgvector_line,
    zone_line,
)
from daemon.commands.quarantine import find_copy, move_no_replace, summary
from daemon.commands.status import human_age, render_table, summarize
from daemon.config import ZoneSettings
from daemon.errors import EXIT_DEPENDENCY, EXIT_OK, EXIT_USAGE, ConfigError, DependencyError
from daemon.ledger import FileRow
from daemon.objectstore import FileStore
from tests.helpers import settings_for

HELP_COMMANDS = [["run"], ["check"], ["status"], ["quarantine"], ["quarantine", "list"],
                 ["quarantine", "show"], ["quarantine", "retry"], ["search"], ["reembed"], ["gc"],
                 []]


def test_run_is_the_default_command() -> None:
    """`python -m daemon --once` means `run --once`; other commands are taken as given."""
    assert cli.parse_args(["--once"]).command == "run"
    args = cli.parse_args(["quarantine", "retry", "3", "4", "--zone", "docs"])
    assert (args.command, args.action, args.ids, args.zone, args.all) == (
        "quarantine", "retry", [3, 4], "docs", False)


def test_options_may_come_before_the_command() -> None:
    """The README's `python -m daemon --config c.yaml` invites `--config c.yaml search q`."""
    args = cli.parse_args(["--config", "c.yaml", "search", "glaciers", "--limit", "3"])
    assert (args.command, args.query, args.config, args.limit) == (
        "search", "glaciers", Path("c.yaml"), 3)
    args = cli.parse_args(["--config", "c.yaml", "quarantine", "list"])
    assert (args.command, args.action, args.config) == ("quarantine", "list", Path("c.yaml"))


@pytest.mark.parametrize("argv", HELP_COMMANDS)
def test_every_command_has_help_with_examples(argv: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` of every command and action exits 0 and shows examples."""
    with pytest.raises(SystemExit) as exited:
        cli.parse_args([*argv, "--help"])
    assert exited.value.code == 0
    assert "example" in capsys.readouterr().out


def test_check_help_documents_its_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """`check --help` lists each exit code it may return."""
    with pytest.raises(SystemExit):
        cli.parse_args(["check", "--help"])
    out = capsys.readouterr().out
    for code in (EXIT_OK, EXIT_USAGE, EXIT_DEPENDENCY, EXIT_ZONE, EXIT_CLOCK):
        assert f"\n  {code}  " in out


@pytest.mark.parametrize("argv", [["quarantine", "retry"], ["quarantine", "retry", "1", "--all"]])
def test_retry_needs_ids_or_all_not_both(argv: list[str], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`quarantine retry` with neither ids nor --all, or both, is a usage error (exit 2)."""
    assert cli.main([*argv, "--config", str(tmp_path / "unused.yaml")]) == EXIT_USAGE
    assert "needs file ids or --all" in capsys.readouterr().err


def test_a_missing_config_is_named_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """No config file: exit 2 and one line naming where it looked, and how to point elsewhere."""
    missing = tmp_path / "nope.yaml"
    monkeypatch.setenv("DROPZONE_CONFIG", str(missing))
    assert cli.main(["status"]) == EXIT_USAGE
    assert capsys.readouterr().err == (f"dropzone: no config at {missing} (from DROPZONE_CONFIG); "
                                       "pass --config PATH or set DROPZONE_CONFIG\n")


def test_a_database_failure_is_explained_without_its_password(tmp_path: Path) -> None:
    """An unreachable database is named (password hidden) with what to check; exit 3."""
    url = "postgresql://app:hunter2-secret@db.example:5432/app"
    settings = settings_for(tmp_path, url)
    error = DependencyError(f"postgres: ConnectionRefusedError: {url} refused")
    message, code = explain(error, settings)
    assert code == EXIT_DEPENDENCY and "hunter2-secret" not in message
    assert message.startswith("cannot use the database at postgresql://app:***@db.example")
    assert "database.url" in message
    assert explain(ConfigError(["embedding.dim: 8"]), settings) == (
        "config error: embedding.dim: 8", EXIT_USAGE)


# -- check ------------------------------------------------------------------------------------

def test_exit_code_is_the_lowest_failing_category() -> None:
    """Warnings pass; a failing dependency outranks a zone, which outranks the clock."""
    zone, clock = Line("zone", FAIL, "", code=EXIT_ZONE), Line("clock", FAIL, "", code=EXIT_CLOCK)
    assert exit_code([Line("pgvector", WARN, ""), Line("clock", NA, "")]) == EXIT_OK
    assert exit_code([clock]) == EXIT_CLOCK
    assert exit_code([clock, zone]) == EXIT_ZONE
    assert exit_code([zone, Line("postgres", FAIL, "")]) == EXIT_DEPENDENCY


def test_clock_skew_is_ok_then_warned_then_failed() -> None:
    """Within 5 s ok; beyond, a warning; beyond 15 min (SigV4 refuses) a failure, exit 5."""
    assert clock_verdict(0.4).status == OK
    warned = clock_verdict(42)
    assert warned.status == WARN and "42 s behind" in warned.detail
    failed = clock_verdict(-16 * 60)
    assert (failed.status, failed.code) == (FAIL, EXIT_CLOCK)
    assert "960 s ahead of" in failed.detail and "synchronise" in failed.detail


async def test_local_storage_has_no_clock_to_compare(tmp_path: Path) -> None:
    """With a local object folder the clock line is n/a."""
    assert (await clock_line(FileStore(tmp_path))).status == NA


def test_a_line_renders_hints_below_and_hides_passwords() -> None:
    """The first line holds name, verdict, detail and time; hints follow, indented."""
    line = Line("postgres", FAIL, "postgresql://u:pw-1234@h/db: refused\ncheck it", 12.3)
    assert line.render() == ("postgres  FAIL  postgresql://u:***@h/db: refused [12 ms]\n"
                             f"{' ' * 16}check it")


def test_pgvector_line_says_why_search_scans_and_how_to_fix_it() -> None:
    """Missing on the server, on the server but not in the database, or in use."""
    missing = pgvector_line({"installed": None, "available": None, "column_type": "real[]",
                             "major": 15}, 384)
    assert missing.status == WARN and "linear scan" in missing.detail
    assert "apt install postgresql-15-pgvector" in missing.detail
    assert "vector(384)" in missing.detail
    idle = pgvector_line({"installed": None, "available": "0.8.0", "column_type": "real[]"}, 384)
    assert "on the server but not in this database" in idle.detail
    assert "CREATE EXTENSION vector" in idle.detail
    used = pgvector_line({"installed": "0.8.0", "column_type": "vector(384)",
                          "hnsw_index": True}, 384)
    assert used.status == OK and "HNSW" in used.detail


def _zone(tmp_path: Path, **folders: Path) -> ZoneSettings:
    (tmp_path / "zone").mkdir(exist_ok=True)
    return ZoneSettings(name="docs", path=tmp_path / "zone",
                        done_dir=folders.get("done", tmp_path / "done"),
                        quarantine_dir=folders.get("quarantine", tmp_path / "q"))


def test_zone_folders_that_can_be_used_or_created_pass(tmp_path: Path) -> None:
    """A writable zone, with done and quarantine folders still to be created, is ok."""
    line = zone_line(_zone(tmp_path))
    assert line.status == OK and "will be created" in line.detail


def test_a_zone_this_user_may_not_write_fails(tmp_path: Path) -> None:
    """Without write permission on the zone folder (files move out of it): FAIL, exit 4."""
    line = zone_line(_zone(tmp_path), access=lambda path, mode: mode != os.W_OK)
    assert (line.status, line.code) == (FAIL, EXIT_ZONE)
    assert "no write permission" in line.detail and "zone" in line.detail


def test_a_quarantine_folder_behind_a_file_fails(tmp_path: Path) -> None:
    """A quarantine folder below a regular file cannot be created, whoever runs check."""
    (tmp_path / "file").write_text("in the way")
    line = zone_line(_zone(tmp_path, quarantine=tmp_path / "file" / "q"))
    assert line.status == FAIL and f"{tmp_path / 'file'} is not a folder" in line.detail


# -- status -----------------------------------------------------------------------------------

def test_human_age_keeps_two_units() -> None:
    """Ages read as the two largest units."""
    assert [human_age(s) for s in (4.7, 61, 3 * 3600 + 125, 2 * 86400 + 3600)] == [
        "4 s", "1 min 1 s", "3 h 2 min", "2 d 1 h"]


def test_status_summary_has_counts_and_details(tmp_path: Path) -> None:
    """Counts by state, plus oldest waiting, last error and throughput, in JSON and a table."""
    settings = settings_for(tmp_path, "postgresql://u@h/db")
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    rows = [{"zone": "docs", "stage": "done", "outcome": "stored", "files": 3, "bytes": 30,
             "last_update": when},
            {"zone": "docs", "stage": "upload", "outcome": "", "files": 1, "bytes": 5,
             "last_update": when}]
    details = [{"zone": "docs", "waiting_path": "a\nb.txt", "waiting_since": when,
                "waiting_s": 125.0, "error_path": "a\nb.txt", "error": "S3 down\nagain",
                "error_at": when, "error_stage": "upload", "finished_5m": 3, "finished_1h": 3}]
    summary = summarize(settings, rows, details)
    docs = summary["zones"]["docs"]
    assert docs["states"] == {"stored": 3, "upload": 1}
    assert docs["oldest_waiting"] == {"path": "a\nb.txt", "since": "2025-01-02T03:04:05+00:00",
                                      "age_s": 125.0}
    assert docs["last_error"]["state"] == "upload"
    assert docs["throughput"] == {"finished_5m": 3, "finished_1h": 3, "per_minute_5m": 0.6,
                                  "per_minute_1h": 0.05}
    table = render_table(json.loads(json.dumps(summary)))
    assert "oldest waiting  a\\nb.txt (waiting 2 min 5 s)" in table
    assert "S3 down again" in table and "3 in 5 min (0.6/min)" in table


# -- quarantine -------------------------------------------------------------------------------

def _report(path: Path, ledger_id: int) -> None:
    path.write_text(json.dumps({"ledger_id": ledger_id, "reason": "too big"}))


def _row(file_id: int, rel_path: str = "sub/big.txt") -> FileRow:
    return FileRow(id=file_id, zone="docs", rel_path=rel_path, size_bytes=5, mtime_ns=1)


def test_the_copy_of_a_row_is_found_by_its_ledger_id(tmp_path: Path) -> None:
    """Two versions quarantined under one name: each row finds its own copy and report."""
    zone = _zone(tmp_path)
    folder = zone.quarantine_dir / "sub"
    folder.mkdir(parents=True)
    for name, file_id in (("big.txt", 1), ("big.1.txt", 2)):
        (folder / name).write_text(name)
        _report(folder / f"{name}.error.json", file_id)
    assert find_copy(zone, _row(2)).file == folder / "big.1.txt"
    assert find_copy(zone, _row(1)).report == folder / "big.txt.error.json"
    gone = find_copy(zone, _row(3, "sub/other.txt"))
    assert gone.file is None and gone.expected == folder / "other.txt"


def test_a_move_never_replaces_a_file(tmp_path: Path) -> None:
    """Moving onto an existing name fails and leaves both files as they were."""
    (tmp_path / "a").write_text("quarantined")
    (tmp_path / "b").write_text("in the zone")
    with pytest.raises(FileExistsError):
        move_no_replace(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").read_text() == "in the zone" and (tmp_path / "a").exists()
    move_no_replace(tmp_path / "a", tmp_path / "new" / "c")
    assert (tmp_path / "new" / "c").read_text() == "quarantined" and not (tmp_path / "a").exists()


@pytest.mark.parametrize(("back", "chosen", "expected"), [
    (0, 0, "no quarantined files to retry"),
    (2, 2, "2 of 2 file(s) put back; a running daemon takes them at once"),
    (1, 3, "; 2 could not be (see above)"),
])
def test_retry_summary(back: int, chosen: int, expected: str) -> None:
    """The summary says how many went back, what happens next, and how many did not."""
    assert expected in summary(back, chosen)


def test_names_and_reasons_stay_on_one_line() -> None:
    """Control characters in names are escaped; reasons are squeezed and cut."""
    assert printable("new\nline\x07.txt") == "new\\nline\\x07.txt"
    assert one_line("a\n  b\tc", 0) == "a b c"
    assert one_line("x" * 10, 5) == "xxxx…"
