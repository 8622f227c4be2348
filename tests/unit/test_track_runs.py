"""Finding or making MLflow runs: a retried call reuses the run it made, a fresh batch never
searches, a resumed one does. A fake client stands in for MLflow (our logic only)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from daemon.stages.track import batch_run, file_runs


class FlakyClient:
    """Records calls; `log_batch` fails the first `failures` times, as a dropped link would."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.created: list[dict[str, str]] = []
        self.searches = 0
        self.runs: dict[str, Any] = {}

    def _run(self, run_id: str) -> Any:
        return self.runs[run_id]

    def create_run(self, experiment_id: str, tags: dict[str, str], run_name: str) -> Any:
        self.created.append(tags)
        run_id = f"run{len(self.created)}"
        self.runs[run_id] = SimpleNamespace(info=SimpleNamespace(
            run_id=run_id, status="RUNNING", start_time=1))
        return self.runs[run_id]

    def get_run(self, run_id: str) -> Any:
        return self.runs[run_id]

    def search_runs(self, *args: Any, **kwargs: Any) -> list[Any]:
        self.searches += 1
        return []

    def log_batch(self, run_id: str, **kwargs: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("link dropped")

    def log_artifact(self, run_id: str, *args: Any, **kwargs: Any) -> None:
        pass

    def set_terminated(self, run_id: str) -> None:
        self.runs[run_id].info.status = "FINISHED"


def record(n: int) -> dict[str, Any]:
    return {"sha256": f"{n:064x}", "zone": "z", "source_path": f"f{n}.txt",
            "object_key": f"k/{n}", "doc_type": "document", "status": "stored"}


def test_a_retried_batch_call_reuses_its_run_and_never_searches() -> None:
    client = FlakyClient(failures=1)
    with pytest.raises(ConnectionError):
        batch_run("b-1", {}, {"x": 1.0}, [record(1)], False, client, "0")
    assert batch_run("b-1", {}, {"x": 1.0}, [record(1)], False, client, "0") == "run1"
    assert (len(client.created), client.searches) == (1, 0)
    assert client.runs["run1"].info.status == "FINISHED"


def test_retried_per_file_runs_make_one_run_per_file() -> None:
    client = FlakyClient(failures=1)
    recs = [record(n) for n in range(3)]
    values = [{"x": float(n)} for n in range(3)]
    with pytest.raises(ConnectionError):
        file_runs(recs, {}, values, False, client, "0")
    assert file_runs(recs, {}, values, False, client, "0") == ["run1", "run2", "run3"]
    assert (len(client.created), client.searches) == (3, 0)


def test_a_resumed_batch_looks_for_runs_made_elsewhere() -> None:
    client = FlakyClient()
    batch_run("b-2", {}, {}, [record(1)], True, client, "0")
    assert (client.searches, len(client.created)) == (1, 1)
