"""Track: record files in MLflow, one run per batch window (default) or one run per file.

Exactly one record per file, whatever is killed when: a batch's id is written to the ledger
before its run exists, the run carries that id as a tag, and a batch found half-done is finished
in the same run. A per-file run is found by its `dropzone.sha256` tag before a new one is made.
Each record in the batch artifact is rewritten whole, so a retried batch never repeats a line.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import daemon
from daemon import failpoints, tracking
from daemon.ledger import FileRow
from daemon.stages import Env

STAGES = ("hash", "upload", "extract", "embed", "store")
ARTIFACT = "files.jsonl"


def record(row: FileRow, env: Env) -> dict[str, Any]:
    """The per-file record: what a person looking at the run needs to find the file."""
    key = row.object_key or ""
    return {
        "ledger_id": row.id, "zone": row.zone, "source_path": row.rel_path,
        "sha256": row.sha256, "doc_type": env.zone(row.zone).doc_type,
        "object_key": key, "object_url": env.sessions.object_url(key) if key else None,
        "bytes": row.size_bytes, "chunks": row.chunks, "dims": env.embedder.dim,
        "status": "stored" if row.stage == "track" else "quarantined",
        "error": row.last_error if row.stage == "quarantined" else None,
        "stage_ms": row.stage_ms,
    }


def params(env: Env, files: int) -> dict[str, str]:
    return {"embedding_model": env.embedder.name, "embedding_dim": str(env.embedder.dim),
            "zones": ",".join(z.name for z in env.settings.zones), "mode": env.mode,
            "dropzone_version": daemon.__version__, "files": str(files)}


def metrics(rows: Sequence[FileRow]) -> dict[str, float]:
    ok = [r for r in rows if r.stage == "track"]
    out = {"files_ok": float(len(ok)), "files_failed": float(len(rows) - len(ok)),
           "bytes": float(sum(r.size_bytes for r in ok)),
           "chunks": float(sum(r.chunks or 0 for r in ok))}
    for stage in STAGES:
        values = [r.stage_ms[stage] for r in ok if stage in r.stage_ms]
        if values:
            out[f"{stage}_ms_mean"] = round(statistics.fmean(values), 3)
            out[f"{stage}_ms_max"] = round(max(values), 3)
    return out


def _find_run(client: Any, experiment_id: str, tags: dict[str, str], resumed: bool) -> Any:
    """The run with these tags, if one can exist: made earlier by this MLflow process (a
    retried call), or by anyone when the batch is `resumed` (its tracker died) or this
    process is a replacement for one that died. A fresh batch costs no search."""
    made = tracking.made_here(tags)
    if made is not None:
        return client.get_run(made)
    if not (resumed or tracking.replaced()):
        return None
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([experiment_id], filter_string=query, max_results=1)
    return runs[0] if runs else None


def _create_run(client: Any, experiment_id: str, tags: dict[str, str], name: str,
                extra: dict[str, str] | None = None) -> Any:
    """A new run, remembered by the `tags` it is found by (it carries `extra` ones too)."""
    run = client.create_run(experiment_id, tags={**tags, **(extra or {})}, run_name=name)
    tracking.remember(tags, str(run.info.run_id))
    return run


def _log(client: Any, run: Any, values: dict[str, float], names: dict[str, str]) -> None:
    from mlflow.entities import Metric, Param

    stamp = int(run.info.start_time)  # the same on a retry: identical points, no duplicates
    client.log_batch(run.info.run_id,
                     metrics=[Metric(k, v, stamp, 0) for k, v in values.items()],
                     params=[Param(k, v) for k, v in names.items()])


def batch_run(batch_id: str, names: dict[str, str], values: dict[str, float],
              records: list[dict[str, Any]], resumed: bool, client: Any,
              experiment_id: str) -> str:
    """Find (if `resumed`) or create the batch's run, fill it, close it; returns its id."""
    tags = {"dropzone.batch_id": batch_id}
    run = _find_run(client, experiment_id, tags, resumed)
    if run is not None and run.info.status == "FINISHED":
        return str(run.info.run_id)
    run = run or _create_run(client, experiment_id, tags,
                             time.strftime("dropzone-%Y%m%d-%H%M%S"))
    failpoints.hit("mid_mlflow_run")
    _log(client, run, values, names)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ARTIFACT
        path.write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
        client.log_artifact(run.info.run_id, str(path), artifact_path="dropzone")
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


def file_runs(recs: list[dict[str, Any]], names: dict[str, str],
              values: list[dict[str, float]], resumed: bool, client: Any,
              experiment_id: str) -> list[str]:
    """The original guide's way, one run per file (found again by its content's tag), for a
    whole batch in one call to the MLflow process; returns the run ids in order."""
    return [_file_run(rec, names, vals, resumed, client, experiment_id)
            for rec, vals in zip(recs, values, strict=True)]


def _file_run(rec: dict[str, Any], names: dict[str, str], values: dict[str, float],
              resumed: bool, client: Any, experiment_id: str) -> str:
    tags = {"dropzone.sha256": str(rec["sha256"]), "dropzone.zone": str(rec["zone"])}
    run = _find_run(client, experiment_id, tags, resumed)
    if run is not None and run.info.status == "FINISHED":
        return str(run.info.run_id)
    extra = {"dropzone.source_path": rec["source_path"], "dropzone.object_key": rec["object_key"],
             "dropzone.doc_type": rec["doc_type"], "dropzone.status": rec["status"]}
    run = run or _create_run(client, experiment_id, tags, Path(rec["source_path"]).name[:200],
                             extra)
    _log(client, run, values, names)
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


async def run_batch(rows: Sequence[FileRow], env: Env, resumed: bool) -> None:
    """Record a claimed batch; afterwards stored files move on to `finish`. Only a `resumed`
    batch (its tracker died) can have runs made by another process, so only then are they
    looked for (a retried call finds its own, see `tracking.made_here`)."""
    if not rows:
        return
    if env.settings.mlflow.run_per_file:
        await _per_file(rows, env, resumed)
        return
    call = partial(batch_run, str(rows[0].batch_id), params(env, len(rows)), metrics(rows),
                   [record(r, env) for r in rows], resumed)
    run_id = await env.sessions.mlflow(call, "mlflow batch run")
    failpoints.hit("after_mlflow")
    await env.ledger.tracked([r.id for r in rows], run_id)


async def _per_file(rows: Sequence[FileRow], env: Env, resumed: bool) -> None:
    stored = [row for row in rows if row.stage == "track"]
    failed = [row.id for row in rows if row.stage != "track"]
    if failed:  # failures are counted, not given runs of their own
        await env.ledger.tracked(failed, None)
    if not stored:
        return
    call = partial(file_runs, [record(r, env) for r in stored], params(env, 1),
                   [metrics([r]) for r in stored], resumed)
    run_ids = await env.sessions.mlflow(call, "mlflow file runs")
    failpoints.hit("after_mlflow")
    await env.ledger.tracked_each([row.id for row in stored], run_ids)
