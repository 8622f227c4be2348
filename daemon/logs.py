"""Logging: one `configure()`, JSON lines to stdout, secrets redacted before anything is written.

structlog renders our own events; the standard library's records (MLflow, botocore, alembic) go
through the same processors, so journald gets one JSON object per line whoever wrote it. A
console renderer is used only when stdout is a terminal.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import structlog

Format = Literal["auto", "json", "console"]
REDACTED = "***"
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)(?=@)", re.I)
_SECRET_KEY = re.compile(r"pass(word)?|secret|token|credential|api_?key", re.I)
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PGPASSWORD", "MLFLOW_TRACKING_TOKEN",
               "MLFLOW_TRACKING_PASSWORD")
_QUIET = ("mlflow", "alembic", "botocore", "aiobotocore", "urllib3", "pgserver", "asyncio",
          "watchfiles")
SUMMARY_EVERY_S = 60.0  # while a dependency is down, its warnings fold into one line this often
_FOLDED_LEVELS = frozenset({"warning", "error", "critical"})
_OUTAGE_EVENTS = frozenset({"dependency_down", "dependency_refuses", "dependency_recovered",
                            "dependency_still_down"})
_secrets: set[str] = set()
_setup: tuple[str, Format, str] = ("info", "auto", "stdout")  # as `configure` was last called


def add_secret(value: str | None) -> None:
    """Never print this value again (passwords read from files, tokens from the environment)."""
    if value and len(value) >= 4:
        _secrets.add(value)


def credential(name: str) -> Path | None:
    """The file systemd's `LoadCredential=` handed over as `name`, if there is one."""
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    path = Path(folder) / name if folder else None
    return path if path is not None and path.is_file() else None


def read_secret(path: Path) -> str:
    """A secret kept in a file, stripped, and never printed from now on."""
    secret = path.read_text(encoding="utf-8").strip()
    add_secret(secret)
    return secret


def redact_text(text: str) -> str:
    """Hide URL passwords and every registered secret in a string."""
    if "://" in text:  # what every URL with a password has (most values are not URLs)
        text = _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED, text)
    for secret in _secrets:
        text = text.replace(secret, REDACTED)
    return text


def _redact_value(key: str, value: Any) -> Any:
    if isinstance(value, str):
        return REDACTED if _SECRET_KEY.search(key) and value else redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v) for v in value]
    return value


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the last step before rendering, so nothing escapes it."""
    for key, value in list(event.items()):
        event[key] = _redact_value(key, value)
    return event


# -- folding: one line when a dependency goes down, one a minute while it stays down ------------

@dataclass
class Outage:
    since: float  # monotonic
    summarised: float  # when the last summary line went out (or the outage began)
    suppressed: int = 0  # lines folded since then


_outages: dict[str, Outage] = {}


def outage_began(dependency: str) -> None:
    """From now on, warnings about `dependency` are folded (the breaker said it is down)."""
    now = time.monotonic()
    _outages.setdefault(dependency, Outage(now, now))


def outage_ended(dependency: str) -> int:
    """Stop folding; returns how many lines were folded since the last summary."""
    outage = _outages.pop(dependency, None)
    return outage.suppressed if outage is not None else 0


@contextmanager
def about(dependency: str) -> Iterator[None]:
    """Every line logged inside (retries included) names `dependency`, so it can be folded."""
    with structlog.contextvars.bound_contextvars(dependency=dependency):
        yield


def fold(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: while a dependency is down, the warnings that name it (`retrying`,
    `not_ready`, `tracking_failed`, ... every few seconds each) are dropped and counted; at
    most every SUMMARY_EVERY_S one goes out as `dependency_still_down` with that count."""
    outage = _outages.get(str(event.get("dependency")))
    if (outage is None or event.get("level") not in _FOLDED_LEVELS
            or event.get("event") in _OUTAGE_EVENTS):
        return event
    outage.suppressed += 1
    now = time.monotonic()
    if now - outage.summarised < SUMMARY_EVERY_S:
        raise structlog.DropEvent
    event["last_event"] = event.get("event")
    event.update(event="dependency_still_down", suppressed=outage.suppressed,
                 down_s=round(now - outage.since))
    outage.summarised, outage.suppressed = now, 0
    return event


def _shared() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    ]


def _library_warning_in_one_line(_: Any, method: str,
                                 event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A library's warning with a traceback (asyncpg's pool, retrying its connections while
    Postgres is away) says what went wrong in one line, as our own lines do; its errors keep
    their tracebacks, being bugs somewhere."""
    exc_info = event.get("exc_info")
    if method in ("debug", "info", "warning") and isinstance(exc_info, tuple) and exc_info[1]:
        del event["exc_info"]
        event["error"] = " ".join(f"{type(exc_info[1]).__name__}: {exc_info[1]}".split())
    return event


def _renderer(fmt: Format, stream: TextIO) -> Any:
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    if console:
        return structlog.dev.ConsoleRenderer(colors=stream.isatty())
    return structlog.processors.JSONRenderer()


def configure(level: str = "info", fmt: Format = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog and the standard library once, for the whole process."""
    global _setup
    stream = stream or sys.stdout
    _setup = (level, fmt, "stderr" if stream is sys.stderr else "stdout")
    for name in _SECRET_ENV:
        add_secret(os.environ.get(name))
    final = [structlog.processors.format_exc_info, redact, _renderer(fmt, stream)]
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared(), _library_warning_in_one_line],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # library warnings become JSON lines too
    warnings.filterwarnings("ignore", message="SOCKS support in urllib3")  # we use no proxy
    _quiet(_QUIET)
    structlog.configure(
        processors=[*_shared(), fold, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def snapshot() -> tuple[tuple[str, Format, str], frozenset[str]]:
    """This process's logging set-up and secrets, for a worker process to `replay`."""
    return _setup, frozenset(_secrets)


def replay(state: tuple[tuple[str, Format, str], frozenset[str]]) -> None:
    """In a worker process: log exactly as the daemon does, to the same stream."""
    (level, fmt, stream), secrets = state
    _secrets.update(secrets)
    configure(level, fmt, sys.stderr if stream == "stderr" else sys.stdout)


def _quiet(names: Iterable[str]) -> None:
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)


def adopt(name: str) -> None:
    """Take over a library logger that installed its own handler (MLflow does, on import)."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = True
    logger.setLevel(logging.WARNING)


def get_logger(name: str = "dropzone") -> Any:
    """A structlog logger; `name` shows as `logger` in every line."""
    return structlog.stdlib.get_logger(name)
