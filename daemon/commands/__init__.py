"""Operator commands behind the command line: `check`, `status`, `quarantine`, `search`,
`reembed` and `gc`, one module each; `daemon.cli` only parses arguments and dispatches here.

What they share lives here: how a failure is put in plain words with what to do about it (and
which exit code it means), and how names from the ledger are shown on one line. Nothing here
prints a secret: every message goes through `redact_text`.
"""

from __future__ import annotations

import sys
from datetime import datetime

import asyncpg

from daemon.config import Settings
from daemon.errors import (
    EXIT_DEPENDENCY,
    EXIT_USAGE,
    ConfigError,
    DaemonError,
    DependencyError,
    UsageError,
)
from daemon.logs import redact_text
from daemon.retry import describe

DATABASE_HINT = ("check that the server runs and accepts connections from this host,\n"
                 "that database.url (host, port, user, database) is right, and that the\n"
                 "password comes from database.password_file, $CREDENTIALS_DIRECTORY/db_password"
                 "\nor PGPASSWORD")
FAILURES = (DaemonError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError)  # not bugs
EMBEDDED_HINT = ("the embedded server lives in {folder}:\n"
                 "check that the folder is writable and that no other program holds it")
CHECK_HINT = "`python -m daemon check` tests every dependency"


def database_name(settings: Settings) -> str:
    """The database as an operator knows it, without its password."""
    if settings.database.url == "embedded":
        return f"the embedded database ({settings.state_dir / 'pg'})"
    return f"the database at {redact_text(settings.database.url)}"


def explain(exc: BaseException, settings: Settings) -> tuple[str, int]:
    """A failure of an operator command in plain words with the fix, and its exit code."""
    if isinstance(exc, ConfigError):
        return f"config error: {exc}", EXIT_USAGE
    if isinstance(exc, UsageError):
        return str(exc), EXIT_USAGE
    text = redact_text(describe(exc))
    if isinstance(exc, DependencyError) and text.startswith(("postgres:", "embedded postgres:")):
        detail = text.split(": ", 1)[1]
        hint = (EMBEDDED_HINT.format(folder=settings.state_dir / "pg")
                if settings.database.url == "embedded" else DATABASE_HINT)
        return f"cannot use {database_name(settings)}: {detail}\n{hint}", EXIT_DEPENDENCY
    return text, EXIT_DEPENDENCY


def fail(exc: BaseException, settings: Settings, doing: str = "") -> int:
    """Print `explain(exc)` on stderr; returns its exit code."""
    message, code = explain(exc, settings)
    prefix = f"{doing} failed: " if doing and code != EXIT_USAGE else ""
    lines = [*message.split("\n"), *([CHECK_HINT] if code == EXIT_DEPENDENCY else [])]
    print(f"dropzone: {prefix}{lines[0]}", *(f"  {line}" for line in lines[1:]), sep="\n",
          file=sys.stderr)
    return code


def printable(text: str) -> str:
    """A name on one line: control characters (a newline in a file name) as escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def one_line(text: str | None, width: int = 0) -> str:
    """Text squeezed onto one line (whitespace runs become one space), cut at `width`."""
    line = " ".join((text or "").split())
    return line if not width or len(line) <= width else line[:width - 1] + "…"


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None


def local_time(moment: datetime | None) -> str:
    """A timestamp for a table: local time, to the second."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "-"
