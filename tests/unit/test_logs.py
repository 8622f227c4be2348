"""Logs: JSON lines, and secrets never written."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest

from daemon import logs


def capture() -> io.StringIO:
    stream = io.StringIO()
    logs.configure("info", "json", stream)
    return stream


def test_url_passwords_and_registered_secrets_are_redacted() -> None:
    """Passwords in URLs, registered secrets and secret-named fields never reach the output."""
    stream = capture()
    logs.add_secret("hunter2-very-secret")
    logs.get_logger("t").info("event", url="postgresql://app:pa55w0rd@db:5432/x",
                              note="the key is hunter2-very-secret", password="plain",
                              nested={"token": "abc123", "ok": "fine"})
    text = stream.getvalue()
    for secret in ("pa55w0rd", "hunter2-very-secret", "plain", "abc123"):
        assert secret not in text
    line = json.loads(text.strip().splitlines()[-1])
    assert line["url"] == "postgresql://app:***@db:5432/x"
    assert line["nested"]["ok"] == "fine"


def test_standard_library_records_become_json_and_are_redacted() -> None:
    """A library logging through `logging` gets the same JSON and the same redaction."""
    stream = capture()
    logging.getLogger("somelib").warning("connecting to https://u:topsecret@host/")
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["level"] == "warning"
    assert "topsecret" not in line["event"]
    assert line["logger"] == "somelib"


def test_a_library_warning_with_a_traceback_is_one_line() -> None:
    """asyncpg's pool warns with a traceback while Postgres is away: the line says why in one
    line; a library's error keeps its traceback."""
    stream = capture()
    for level in (logging.WARNING, logging.ERROR):
        try:
            raise ConnectionRefusedError("cannot reach\npostgres")
        except ConnectionRefusedError:
            logging.getLogger("asyncpg.pool").log(level, "Failed to restore", exc_info=True)
    warning, error = (json.loads(line) for line in stream.getvalue().strip().splitlines()[-2:])
    assert warning["error"] == "ConnectionRefusedError: cannot reach postgres"
    assert "exception" not in warning
    assert "Traceback" in error["exception"]


def test_an_mlflow_token_from_systemd_credentials_is_used_and_redacted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`LoadCredential=mlflow_token` becomes $MLFLOW_TRACKING_TOKEN (where MLflow looks) and is
    redacted from logs; a token already in the environment wins."""
    from daemon.tracking import token_from_credentials

    (tmp_path / "mlflow_token").write_text("cred-token-from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    token_from_credentials()
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == "cred-token-from-systemd"
    assert "cred-token-from-systemd" not in logs.redact_text("auth cred-token-from-systemd")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "from-env")
    token_from_credentials()
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == "from-env"
