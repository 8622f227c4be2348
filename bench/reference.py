"""The original guide's "Drop Zone File Processing" recipe, faithfully, as the baseline.

One file at a time, synchronously, exactly the guide's four steps (its
`process_dropzone_file`):

1. upload: boto3 `put_object` of the whole file with `ServerSideEncryption='AES256'` to
   `dropzones/{%Y%m%d_%H%M%S}/{doc_type}/{basename}`;
2. embed: download it back (`get_object`) and TF-IDF it alone (`TfidfVectorizer().fit_transform
   ([content])`, the guide's `tls.tfidf_fit_transform`), so the vector is as long as that one
   document's vocabulary;
3. store: psycopg2 `INSERT` of (s3_key, doc_type, embedding, created_date), committed;
4. track: one MLflow run per file (`create_run`, `log_batch` of the guide's dict, numbers as
   metrics and strings as params, `set_terminated`).

One liberty, in the recipe's favour: the guide builds a `UnifiedSessionManager()` inside every
call; here the S3 client, the connection and the MlflowClient are made once and reused, as a
caching session manager would. So this is the recipe's best case, not its worst.

    python -m bench.reference --corpus DIR --endpoint URL --bucket B --database-url URL \
        --tracking-uri sqlite:///tmp/x/mlflow.db      # prints {"files": n, "seconds": s}
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import psycopg2
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from sklearn.feature_extraction.text import TfidfVectorizer

TABLE = "document_embeddings_reference"
EXPERIMENT = "tidyllm-processing"  # the guide's UNIFIED_CONFIG["mlflow"]["experiment_name"]
DDL = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    id bigserial PRIMARY KEY,
    s3_key text NOT NULL,
    doc_type text NOT NULL,
    embedding real[] NOT NULL,
    created_date timestamp NOT NULL
)"""
INSERT = (f"INSERT INTO {TABLE} (s3_key, doc_type, embedding, created_date) "
          "VALUES (%s, %s, %s, %s)")


@dataclass
class Sessions:
    """What the guide's UnifiedSessionManager hands out: S3 client, connection, MLflow."""

    s3: Any
    conn: Any
    mlflow: MlflowClient
    experiment_id: str
    bucket: str


def open_sessions(endpoint: str, bucket: str, database_url: str, tracking_uri: str) -> Sessions:
    """Make the three clients once, create the table and the experiment if missing."""
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    conn = psycopg2.connect(database_url)
    with conn.cursor() as cur:
        cur.execute(DDL)
    conn.commit()
    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = found.experiment_id if found else client.create_experiment(EXPERIMENT)
    return Sessions(s3, conn, client, str(experiment_id), bucket)


def log_mlflow_experiment(sessions: Sessions, values: dict[str, Any]) -> str:
    """The guide's `session_mgr.log_mlflow_experiment(dict)`: one run, numbers as metrics,
    everything else as params, in one log_batch; returns the run id."""
    client = sessions.mlflow
    run = client.create_run(sessions.experiment_id)
    stamp = int(time.time() * 1000)
    metrics = [Metric(k, float(v), stamp, 0) for k, v in values.items()
               if isinstance(v, int | float)]
    params = [Param(k, str(v)) for k, v in values.items() if not isinstance(v, int | float)]
    client.log_batch(run.info.run_id, metrics=metrics, params=params)
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


def process_dropzone_file(sessions: Sessions, file_path: Path, doc_type: str) -> str:
    """The guide's `process_dropzone_file`, step for step; returns the S3 key."""
    # 1. Upload to S3 (the whole file in memory, as the guide's upload_to_s3 does)
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    s3_key = f"dropzones/{stamp}/{doc_type}/{os.path.basename(file_path)}"  # noqa: PTH119
    sessions.s3.put_object(Bucket=sessions.bucket, Key=s3_key, Body=file_path.read_bytes(),
                           ServerSideEncryption="AES256")
    # 2. Generate embeddings from the downloaded copy, TF-IDF fitted on this one document
    content = sessions.s3.get_object(Bucket=sessions.bucket, Key=s3_key)["Body"].read()
    embeddings = TfidfVectorizer().fit_transform([content.decode("utf-8")]).toarray()
    # 3. Store in database
    with sessions.conn.cursor() as cur:
        cur.execute(INSERT, (s3_key, doc_type, embeddings[0].tolist(), datetime.now()))
    sessions.conn.commit()
    # 4. Track in MLflow
    log_mlflow_experiment(sessions, {"s3_key": s3_key, "doc_type": doc_type,
                                     "embedding_dimensions": len(embeddings[0]),
                                     "processing_status": "completed"})
    return s3_key


def run(files: list[Path], endpoint: str, bucket: str, database_url: str, tracking_uri: str,
        doc_type: str = "document") -> tuple[int, float]:
    """Process `files` one by one; returns (files processed, seconds including set-up)."""
    start = time.perf_counter()
    sessions = open_sessions(endpoint, bucket, database_url, tracking_uri)
    try:
        for path in files:
            process_dropzone_file(sessions, path, doc_type)
    finally:
        sessions.conn.close()
    return len(files), time.perf_counter() - start


def main() -> None:
    """Command line for the harness: it runs this as a subprocess and times it from outside."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--doc-type", default="document")
    parser.add_argument("--warmup", action="store_true",
                        help="create the table and the MLflow store/experiment, process nothing")
    args = parser.parse_args()
    files = [] if args.warmup else sorted(p for p in args.corpus.rglob("*") if p.is_file())
    done, seconds = run(files, args.endpoint, args.bucket, args.database_url, args.tracking_uri,
                        args.doc_type)
    print(json.dumps({"files": done, "seconds": round(seconds, 3)}))


if __name__ == "__main__":
    main()
