"""Secrets never appear in logs, errors, `check` or `status`: planted ones are grepped for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests.helpers import REPO, Daemon, free_port, make_corpus, proxy_for, via_proxy, write_config

PLANTED = {
    "AWS_SECRET_ACCESS_KEY": "PLANTED-aws-secret-key-0123456789",
    "AWS_SESSION_TOKEN": "PLANTED-aws-session-token-abcdef",
    "MLFLOW_TRACKING_TOKEN": "PLANTED-mlflow-env-token-424242",
    "DB_PASSWORD": "PLANTED-db-password-in-url-7777",
}
CREDENTIAL_FILE_PASSWORD = "PLANTED-credentials-dir-password-99"


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username or 'postgres'}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def run_cli(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-m", "daemon", *args], capture_output=True,
                            text=True, timeout=300, cwd=REPO, env={**os.environ, **env})
    return result.stdout + result.stderr


def assert_clean(text: str) -> None:
    for secret in [*PLANTED.values(), CREDENTIAL_FILE_PASSWORD]:
        assert secret not in text, f"{secret} leaked"


def test_planted_secrets_never_reach_logs_errors_or_reports(
        tmp_path: Path, database_url: str, s3_endpoint: str) -> None:
    """AWS keys, a session token, an MLflow token, a password in the database URL and one in
    $CREDENTIALS_DIRECTORY: none appears anywhere, even when every dependency fails."""
    proxy = proxy_for(database_url)  # TCP, so the URL can carry a password (trust ignores it)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "db_password").write_text(CREDENTIAL_FILE_PASSWORD)
    env = {**PLANTED, "CREDENTIALS_DIRECTORY": str(credentials)}
    mlflow_down = f"http://dz:{PLANTED['MLFLOW_TRACKING_TOKEN']}@127.0.0.1:{free_port()}"
    try:
        url = with_password(via_proxy(database_url, proxy), "${DB_PASSWORD}")
        storage = {"url": "s3://no-such-bucket-for-secrets/p", "endpoint_url": s3_endpoint}
        path = write_config(tmp_path, database=url, storage=storage,
                            mlflow={"tracking_uri": mlflow_down},
                            pipeline={"outage_wait_s": 5})
        make_corpus(tmp_path / "zones" / "docs", 3)
        once = Daemon(path, "--once", "--log-level", "debug", env=env)
        assert once.run() == 3
        output = once.output()
        output += run_cli(["check", "--config", str(path)], env)
        output += run_cli(["status", "--json", "--config", str(path)], env)
        no_password = write_config(tmp_path, database=via_proxy(database_url, proxy))
        output += run_cli(["check", "--config", str(no_password)], env)  # password from file
    finally:
        proxy.stop()
    assert "dependency_refuses" in output and "FAIL" in output  # errors were logged
    assert_clean(output)
    reports = "".join(p.read_text() for p in tmp_path.rglob("*.error.json"))
    assert_clean(reports)
