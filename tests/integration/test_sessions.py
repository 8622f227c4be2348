"""Sessions: the one pool, against real S3 (SeaweedFS), Postgres and MLflow."""

from __future__ import annotations

import hashlib
import os
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from daemon.errors import PermanentError, TransientError
from daemon.retry import RetryPolicy
from daemon.sessions import Sessions
from tests.helpers import free_port, s3_storage, settings_for

FAST = RetryPolicy(attempts=3, deadline_s=10, base_s=0.01, max_s=0.05)


def get_run(run_id: str, client: Any, experiment_id: str) -> Any:
    """Sent to the MLflow process, so a module-level function (lambdas do not pickle)."""
    return client.get_run(run_id)


@pytest.mark.parametrize("direct", [True, False], ids=["direct-put", "sdk-put"])
async def test_s3_round_trip_with_encryption(tmp_path: Path, database_url: str, s3_endpoint: str,
                                             bucket: str, direct: bool) -> None:
    """put, get, list and delete work under the prefix, and objects are stored with SSE, the
    content type and the MD5 ETag, whichever way they go up (keys with odd characters too)."""
    storage = {**s3_storage(s3_endpoint, bucket, "p"), "direct_put": direct}
    settings = settings_for(tmp_path, database_url, storage=storage)
    key, body = "a/b c+d~é%.txt", b"hello" * 1000
    async with Sessions(settings) as sessions:
        assert (sessions.store.direct is not None) is direct  # type: ignore[attr-defined]
        put = await sessions.put_object(key, body)
        assert put.url == f"s3://{bucket}/p/{key}"
        assert (put.etag, put.sse) == (hashlib.md5(body).hexdigest(), "AES256")
        assert await sessions.get_object(key) == body
        assert await sessions.list_objects("a/") == [key]
        head = boto3.client("s3", endpoint_url=s3_endpoint).head_object(Bucket=bucket,
                                                                        Key=f"p/{key}")
        assert (head["ServerSideEncryption"], head["ContentType"]) == ("AES256", "text/plain")
        await sessions.delete_object(key)
        assert await sessions.list_objects() == []


async def test_large_files_go_up_in_parts(tmp_path: Path, database_url: str, s3_endpoint: str,
                                          bucket: str) -> None:
    """A file over the multipart threshold is uploaded in parts and reads back identical."""
    storage = {**s3_storage(s3_endpoint, bucket), "multipart_threshold": "5MiB"}
    settings = settings_for(tmp_path, database_url, storage=storage)
    body = os.urandom(21 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(body)
    async with Sessions(settings) as sessions:
        with (tmp_path / "big.bin").open("rb") as handle:
            put = await sessions.put_stream("big.bin", handle, len(body),
                                            hashlib.sha256(body).digest())
        assert put.etag is not None and put.etag.endswith("-3")  # 8, 8 and 5 MiB
        assert await sessions.get_object("big.bin") == body


async def test_unreachable_s3_is_transient_and_bounded(tmp_path: Path, database_url: str) -> None:
    """Nothing listening: a TransientError after the policy's attempts, not a hang."""
    storage = s3_storage(f"http://127.0.0.1:{free_port()}", "nobucket")
    settings = settings_for(tmp_path, database_url, storage=storage)
    async with Sessions(settings, policy=FAST) as sessions:
        with pytest.raises(TransientError, match="put k"):
            await sessions.put_object("k", b"x")


@pytest.mark.parametrize("direct", [True, False], ids=["direct-put", "sdk-put"])
async def test_missing_bucket_is_permanent(tmp_path: Path, database_url: str,
                                           s3_endpoint: str, direct: bool) -> None:
    """NoSuchBucket is not retried: it will not fix itself (said alike by both put paths)."""
    storage = {**s3_storage(s3_endpoint, "no-such-bucket-here"), "direct_put": direct}
    settings = settings_for(tmp_path, database_url, storage=storage)
    async with Sessions(settings, policy=FAST) as sessions:
        with pytest.raises(PermanentError, match="NoSuchBucket"):
            await sessions.put_object("k", b"x")


async def test_postgres_queries_transactions_and_bulk_embeddings(
        tmp_path: Path, database_url: str) -> None:
    """Parameterised queries, all-or-nothing transactions and COPY of embeddings."""
    settings = settings_for(tmp_path, database_url, embedding={"dim": 8})
    async with Sessions(settings) as sessions:
        doc = await sessions.fetchval(
            "INSERT INTO documents (zone, doc_type, source_path, object_url, sha256, size_bytes)"
            " VALUES ($1, 'd', 'p', 'u', $2, 1) RETURNING id", "z", "0" * 64)

        async def fails(conn: object) -> None:
            await sessions.db.pool.execute("SELECT 1")
            raise ValueError("boom")

        with pytest.raises(PermanentError, match="boom"):
            await sessions.transaction(fails)
        vector = np.arange(8, dtype=np.float32) / 10
        rows = [(doc, i, "k", "d", f"chunk {i} é", i * 10, vector * (i + 1), "m")
                for i in range(3)]
        assert await sessions.bulk_insert_embeddings(rows) == 3
        found = await sessions.query("SELECT chunk_index, content, char_start, "
                                     "embedding::real[] AS v FROM document_embeddings "
                                     "WHERE document_id = $1 ORDER BY 1", doc)
        assert [(r["chunk_index"], r["content"], r["char_start"]) for r in found] == [
            (0, "chunk 0 é", 0), (1, "chunk 1 é", 10), (2, "chunk 2 é", 20)]
        assert np.allclose(found[2]["v"], vector * 3)


async def test_mlflow_on_sqlite(tmp_path: Path, database_url: str) -> None:
    """A run logged through sessions is in the sqlite store, artifacts under the state dir."""
    settings = settings_for(tmp_path, database_url)
    async with Sessions(settings) as sessions:
        run_id = await sessions.log_mlflow_run({"model": "m"}, {"files": 3.0}, {"k": "v"})
        assert await sessions.probe_mlflow()
        run = await sessions.mlflow(partial(get_run, run_id))
    assert run.data.metrics == {"files": 3.0}
    assert run.data.params == {"model": "m"}
    assert run.info.artifact_uri.startswith((tmp_path / "var" / "mlartifacts").as_uri())


async def test_mlflow_over_http(tmp_path: Path, database_url: str, mlflow_server: str) -> None:
    """The same against a real `mlflow server` process."""
    settings = settings_for(tmp_path, database_url, mlflow={"tracking_uri": mlflow_server,
                                                            "experiment": "http-test"})
    async with Sessions(settings) as sessions:
        run_id = await sessions.log_mlflow_run({"model": "m"}, {"files": 1.0})
        run = await sessions.mlflow(partial(get_run, run_id))
    assert run.data.metrics == {"files": 1.0}


async def test_mlflow_down_is_transient(tmp_path: Path, database_url: str) -> None:
    """An MLflow server that is not there gives a TransientError, bounded by the policy."""
    settings = settings_for(tmp_path, database_url,
                            mlflow={"tracking_uri": f"http://127.0.0.1:{free_port()}"})
    async with Sessions(settings, mlflow_policy=FAST) as sessions:
        with pytest.raises(TransientError):
            await sessions.log_mlflow_run({}, {"x": 1.0})
