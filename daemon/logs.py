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
import warnings
from collections.abc import Iterable, MutableMapping
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


def _shared() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    ]


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
        foreign_pre_chain=_shared(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # library warnings become JSON lines too
    warnings.filterwarnings("ignore", message="SOCKS support in urllib3")  # we use no proxy
    _quiet(_QUIET)
    structlog.configure(
        processors=[*_shared(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
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
