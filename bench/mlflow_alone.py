"""MLflow's own ceiling for one run per file: N runs and nothing else.

Each run is made the way the daemon's `run_per_file: true` mode makes it
(`daemon/stages/track.py: file_run`, for a batch that is not resumed after a crash, so no
`search_runs` first), copied here rather than imported so that this contender still runs while
the daemon is being edited: `create_run` with the same six tags, one `log_batch` of as many
metrics and params as the daemon logs per file (14 and 6), `set_terminated`. No S3, no
Postgres, no embedding: whatever dropzone's per-file mode costs beyond this is the daemon's.

    python -m bench.mlflow_alone --runs 2000 --tracking-uri sqlite:///tmp/x/mlflow.db
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

EXPERIMENT = "dropzone"
STAGES = ("hash", "upload", "extract", "embed", "store")


def experiment_id(client: MlflowClient) -> str:
    """The daemon's experiment, created on first use."""
    found = client.get_experiment_by_name(EXPERIMENT)
    return str(found.experiment_id if found else client.create_experiment(EXPERIMENT))


def values(index: int) -> tuple[list[Metric], list[Param]]:
    """Metrics and params shaped like the daemon's per-file ones (`track.metrics/params`)."""
    numbers = {"files_ok": 1.0, "files_failed": 0.0, "bytes": 16000.0 + index, "chunks": 17.0}
    for stage in STAGES:
        numbers[f"{stage}_ms_mean"] = 1.5
        numbers[f"{stage}_ms_max"] = 1.5
    names = {"embedding_model": "hashing", "embedding_dim": "384", "zones": "bench",
             "mode": "once", "dropzone_version": "0.1.0", "files": "1"}
    stamp = int(time.time() * 1000)
    return ([Metric(k, v, stamp, 0) for k, v in numbers.items()],
            [Param(k, v) for k, v in names.items()])


def file_run(client: MlflowClient, experiment: str, index: int) -> str:
    """One run as the daemon makes it per file: create, log_batch, terminate."""
    sha = hashlib.sha256(str(index).encode()).hexdigest()
    tags = {"dropzone.sha256": sha, "dropzone.zone": "bench"}
    name = f"doc-{index:06d}.txt"
    extra = {"dropzone.source_path": f"part-000/{name}", "dropzone.doc_type": "document",
             "dropzone.object_key": f"dropzones/document/{sha}/{name}",
             "dropzone.status": "stored"}
    run = client.create_run(experiment, tags={**tags, **extra}, run_name=name)
    metrics, params = values(index)
    client.log_batch(run.info.run_id, metrics=metrics, params=params)
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


def run(runs: int, tracking_uri: str) -> tuple[int, float]:
    """Make `runs` runs; returns (runs made, seconds including the client's set-up)."""
    start = time.perf_counter()
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = experiment_id(client)
    for index in range(runs):
        file_run(client, experiment, index)
    return runs, time.perf_counter() - start


def main() -> None:
    """Command line for the harness, which times this process from outside."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--warmup", action="store_true",
                        help="create the store and the experiment, make no run")
    args = parser.parse_args()
    done, seconds = run(0 if args.warmup else args.runs, args.tracking_uri)
    print(json.dumps({"files": done, "seconds": round(seconds, 3)}))


if __name__ == "__main__":
    main()
