"""Shared fixtures: real Postgres, a real S3 server (SeaweedFS), MLflow stores and server.

Postgres is the server in DZ_TEST_DATABASE_URL when set, else an embedded pgserver started once
per session; every test that needs a database gets a fresh one on that server.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import pytest

from daemon.database import with_database
from tests.helpers import free_port, stop_embedded
from tests.seaweed import EVENTS_ENV, SeaweedFS

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key-value",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session", autouse=True)
def mlflow_preload() -> Iterator[None]:
    """The suite opens hundreds of MLflow processes: let them fork from a server that imported
    MLflow once (daemon/tracking.py). Daemons started by tests inherit it unless a test says
    otherwise; the benchmarks and users run without it."""
    saved = os.environ.get("DROPZONE_MLFLOW_PRELOAD")
    os.environ["DROPZONE_MLFLOW_PRELOAD"] = "1"
    yield
    if saved is None:
        os.environ.pop("DROPZONE_MLFLOW_PRELOAD")
    else:
        os.environ["DROPZONE_MLFLOW_PRELOAD"] = saved


@pytest.fixture(scope="session", autouse=True)
def aws_env() -> Iterator[None]:
    """The test S3 server's credentials; the daemon finds them through the standard chain."""
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def onnx_model() -> Path:
    """all-MiniLM-L6-v2-q8, fetched once by `daemon.embedders.fetch` into DZ_TEST_MODEL_DIR
    (default: where the onnx provider looks, ~/.cache/dropzone/models/...), so later runs and
    CI with that folder cached download nothing. A lock beside it: xdist workers fetch once."""
    from daemon.config import ONNX_MODEL, default_model_dir
    from daemon.embedders.fetch import fetch, is_complete

    folder = Path(os.environ.get("DZ_TEST_MODEL_DIR") or default_model_dir(ONNX_MODEL))
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_complete(folder):
            fetch("minilm", folder)
    return folder


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """An admin URL of the Postgres server the tests use."""
    url = os.environ.get("DZ_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from daemon.database import start_embedded

    with tempfile.TemporaryDirectory(prefix="dz-pg-") as folder:
        yield start_embedded(Path(folder))
        stop_embedded(Path(folder) / "pg")


async def _admin(admin_url: str, statement: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def database_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"dz_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(pg_server, f'CREATE DATABASE "{name}"'))
    yield with_database(pg_server, name)
    asyncio.run(_admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 server (SeaweedFS): it verifies signatures and checksums, as AWS does."""
    with SeaweedFS(AWS_ENV["AWS_ACCESS_KEY_ID"], AWS_ENV["AWS_SECRET_ACCESS_KEY"]) as server:
        yield server.endpoint


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the S3 server."""
    name = f"dz-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=name)
    return name


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"mlflow server did not answer at {url}")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` process with a sqlite backend, over HTTP."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
               str(port), "--workers", "1", "--backend-store-uri",
               f"sqlite:///{folder}/mlflow.db", "--artifacts-destination", str(folder / "art")]
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - closed below
    # no job runner and huey consumer beside it: two more processes the tests never use
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
                               env=env)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", process, 120)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def pytest_configure(config: pytest.Config) -> None:
    """The session (not an xdist worker) makes the file servers announce themselves in."""
    if not hasattr(config, "workerinput") and EVENTS_ENV not in os.environ:
        fd, path = tempfile.mkstemp(prefix="dz-test-events-", suffix=".log")
        os.close(fd)
        os.environ[EVENTS_ENV] = path


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    path = os.environ.get(EVENTS_ENV)
    if hasattr(config, "workerinput") or not path or not Path(path).exists():
        return
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    terminalreporter.section("real servers started")
    for line in lines or ["none (no test needed one)"]:
        terminalreporter.write_line(line)
    Path(path).unlink()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that asks for a database is marked `db` (CI runs those on both servers)."""
    for item in items:
        if "database_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.db)

