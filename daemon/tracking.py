"""MLflow: the client, and the one thread every MLflow call runs in.

Importing MLflow takes about a second and creating a sqlite store another; both happen in that
thread as soon as the daemon starts, overlapped with the scan, so they never delay the first
file. MLflow's own HTTP retries are switched off: our retry policy is the only one.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from daemon import failpoints
from daemon.config import MlflowSettings
from daemon.errors import PermanentError
from daemon.files import exclusive
from daemon.logs import adopt, get_logger

T = TypeVar("T")
log = get_logger("dropzone.tracking")
_LOCAL_SCHEMES = ("sqlite:", "file:", "postgresql", "mysql", "mssql")


def init_sqlite_store(path: Path) -> None:
    """Create a new sqlite store beside its place, then rename it in: a first start killed while
    MLflow creates its tables must not leave a half-made store that MLflow refuses to open."""
    from mlflow.tracking import MlflowClient

    with exclusive(path.with_name(f"{path.name}.lock")):
        if path.exists():
            return
        for stale in path.parent.glob(f".{path.name}.init-*"):
            stale.unlink()
        draft = path.with_name(f".{path.name}.init-{os.getpid()}")
        MlflowClient(tracking_uri=f"sqlite:///{draft}").search_experiments(max_results=1)
        failpoints.hit("mlflow_store_init")
        draft.replace(path)


class Tracking:
    """Owns the MlflowClient; `call(fn)` runs `fn(client, experiment_id)` in the MLflow thread."""

    def __init__(self, settings: MlflowSettings, state_dir: Path) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow")
        self._client: Any = None
        self._experiment_id = ""
        self.warmup: Future[None] | None = None

    def start(self) -> None:
        """Import MLflow and open the store in the background."""
        self.warmup = self._executor.submit(self._connect_quietly)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def call(self, fn: Callable[[Any, str], T]) -> T:
        return await asyncio.wrap_future(self._executor.submit(self._run, fn))

    def _run(self, fn: Callable[[Any, str], T]) -> T:
        if self._client is None:
            self._connect()
        return fn(self._client, self._experiment_id)

    def _connect_quietly(self) -> None:
        try:
            self._connect()
        except Exception as exc:  # reported again, with retries, by the first real call
            log.warning("mlflow_not_ready", error=str(exc)[:300])

    def _connect(self) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        from mlflow.tracking import MlflowClient

        adopt("mlflow")
        if self.settings.tracking_uri.startswith("sqlite:///"):
            init_sqlite_store(Path(self.settings.tracking_uri.removeprefix("sqlite:///")))
        client = MlflowClient(tracking_uri=self.settings.tracking_uri)
        self._experiment_id = self._experiment(client)
        self._client = client

    def _artifact_location(self) -> str | None:
        if self.settings.artifact_location:
            return self.settings.artifact_location
        if self.settings.tracking_uri.startswith(_LOCAL_SCHEMES):
            return (self.state_dir / "mlartifacts").as_uri()
        return None

    def _experiment(self, client: Any) -> str:
        from mlflow.exceptions import MlflowException

        name = self.settings.experiment
        found = client.get_experiment_by_name(name)
        if found is None:
            try:
                return str(client.create_experiment(name, self._artifact_location()))
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = client.get_experiment_by_name(name)
        if found.lifecycle_stage == "deleted":
            raise PermanentError(f"mlflow experiment '{name}' is deleted; restore or rename it")
        return str(found.experiment_id)
