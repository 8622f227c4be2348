"""The whole pipeline in-process (`--once`), against S3 on SeaweedFS, Postgres and MLflow."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import boto3

from daemon.config import Settings
from daemon.supervisor import Supervisor
from tests.helpers import Sinks, s3_storage, write_config

HTML = "<html><head><style>p{color:red}</style><script>var x=1;</script></head>" \
       "<body><h1>Quarterly</h1><p>Revenue grew &amp; costs fell.</p></body></html>"


def corpus(zone: Path) -> dict[str, bytes]:
    files = {
        "notes.txt": b"Plain text notes about invoices and payments.\n\nSecond paragraph.",
        "readme.md": b"# Title\n\nSome *markdown* text about dropzones.",
        "page.html": HTML.encode(),
        "data.csv": b"name,amount\nalice,10\nbob,20\n",
        "data.json": json.dumps({"k": "a json document about embeddings"}).encode(),
        "deep/nested/log.log": b"2026-01-01 INFO started\n" * 50,
        "photo.jpg": bytes(range(256)) * 4,
        "fake.txt": b"\x00\x01\x02binary pretending to be text",
        "bad-utf8.txt": b"caf\xe9 au lait, na\xefve text",
        "copy-of-notes.txt": b"Plain text notes about invoices and payments.\n\nSecond paragraph.",
    }
    for name, data in files.items():
        (zone / name).parent.mkdir(parents=True, exist_ok=True)
        (zone / name).write_bytes(data)
    return files


def configure(tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str,
              **sections: Any) -> tuple[Path, Settings]:
    path = write_config(tmp_path, database=database_url,
                        storage=s3_storage(s3_endpoint, bucket), **sections)
    sinks = Sinks(path)
    return path, sinks.settings


async def test_once_stores_every_file_once_in_every_sink(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """Objects, documents, chunks and one MLflow batch record per stored file; files moved."""
    path, settings = configure(tmp_path, database_url, s3_endpoint, bucket)
    files = corpus(tmp_path / "zones" / "docs")
    assert await Supervisor(settings, once=True).serve() == 0
    sinks = Sinks(path)
    docs = {d["source_path"]: d for d in sinks.documents()}
    stored = set(files) - {"copy-of-notes.txt"}
    assert set(docs) == stored
    assert len(sinks.object_keys()) == len(stored)
    meta = {name: json.loads(d["metadata"]) for name, d in docs.items()}
    assert meta["photo.jpg"]["extraction"] == "unsupported"
    assert meta["fake.txt"]["extraction"] == "binary"
    assert meta["bad-utf8.txt"]["encoding"] == "cp1252"  # not UTF-8: the likeliest code page
    chunks = sinks.chunks()
    assert any(c["content"] == "café au lait, naïve text" for c in chunks)
    by_doc = {d["id"]: name for name, d in docs.items()}
    chunked = {by_doc[c["document_id"]] for c in chunks}
    assert chunked == stored - {"photo.jpg", "fake.txt"}
    html = " ".join(c["content"] for c in chunks if by_doc[c["document_id"]] == "page.html")
    assert "Revenue grew & costs fell." in html and "<p>" not in html and "var x" not in html
    records = sinks.mlflow_records()
    assert sorted(r["source_path"] for r in records) == sorted(stored)
    assert len(sinks.mlflow_runs()) == 1
    assert {d["mlflow_run_id"] for d in docs.values()} == {records[0]["run_id"]}
    assert not any((tmp_path / "zones" / "docs").rglob("*.*"))
    assert (tmp_path / "var" / "done" / "docs" / "deep" / "nested" / "log.log").exists()
    assert (tmp_path / "var" / "done" / "docs" / "copy-of-notes.txt").exists()
    [notes] = [r for r in sinks.ledger() if r["rel_path"] == "notes.txt"]
    stages = {"hash", "upload", "extract", "embed", "store", "finish"}
    assert stages <= set(json.loads(notes["stage_ms"])), "every stage's time is recorded"


async def test_a_second_once_finds_nothing_and_makes_no_run(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """Same content dropped again is not stored twice, and no empty MLflow run is made."""
    path, settings = configure(tmp_path, database_url, s3_endpoint, bucket)
    corpus(tmp_path / "zones" / "docs")
    assert await Supervisor(settings, once=True).serve() == 0
    corpus(tmp_path / "zones" / "docs")  # the same files again
    assert await Supervisor(settings, once=True).serve() == 0
    assert await Supervisor(settings, once=True).serve() == 0  # and an empty zone
    sinks = Sinks(path)
    assert len(sinks.documents()) == 9
    assert len(sinks.object_keys()) == 9
    assert len(sinks.mlflow_runs()) == 1
    outcomes = [r["outcome"] for r in sinks.ledger()]
    assert outcomes.count("stored") == 9 and outcomes.count("duplicate") == 11


async def test_run_per_file_gives_each_file_its_run(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """`run_per_file: true`: one run per stored file, tagged with its sha256; the ledger and
    each document name that file's own run."""
    path, settings = configure(tmp_path, database_url, s3_endpoint, bucket,
                               mlflow={"run_per_file": True})
    corpus(tmp_path / "zones" / "docs")
    assert await Supervisor(settings, once=True).serve() == 0
    sinks = Sinks(path)
    shas = sorted(d["sha256"] for d in sinks.documents())
    assert sorted(r["sha256"] for r in sinks.mlflow_records()) == shas
    assert len(sinks.mlflow_runs()) == len(shas)
    runs = {r["sha256"]: r["run_id"] for r in sinks.mlflow_records()}
    assert {d["sha256"]: d["mlflow_run_id"] for d in sinks.documents()} == runs
    stored = [f for f in sinks.ledger() if f["document_id"] is not None]
    assert stored and all(f["mlflow_run_id"] == runs[f["sha256"]] for f in stored)


async def test_a_file_that_cannot_be_processed_is_quarantined_with_its_reason(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """Over max_file_bytes: moved to quarantine with <name>.error.json; exit code 1."""
    path, settings = configure(tmp_path, database_url, s3_endpoint, bucket,
                               pipeline={"max_file_bytes": 100, "workers": 2})
    zone = tmp_path / "zones" / "docs"
    (zone / "small.txt").write_text("fits")
    (zone / "big.txt").write_text("x" * 101)
    assert await Supervisor(settings, once=True).serve() == 1
    quarantine = tmp_path / "var" / "quarantine" / "docs"
    report = json.loads((quarantine / "big.txt.error.json").read_text())
    assert (quarantine / "big.txt").read_text() == "x" * 101
    assert "over pipeline.max_file_bytes" in report["reason"]
    sinks = Sinks(path)
    assert [d["source_path"] for d in sinks.documents()] == ["small.txt"]
    records = {r["source_path"]: r["status"] for r in sinks.mlflow_records()}
    assert records == {"small.txt": "stored", "big.txt": "quarantined"}


async def test_replayed_stages_change_nothing(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """Running upload and store again for stored files adds no object, document or chunk."""
    zones = [{"name": "docs", "path": "zones/docs", "settle_ms": 0, "after": "keep"}]
    path, settings = configure(tmp_path, database_url, s3_endpoint, bucket, zones=zones)
    corpus(tmp_path / "zones" / "docs")
    assert await Supervisor(settings, once=True).serve() == 0
    sinks = Sinks(path)
    before = (sinks.object_keys(), len(sinks.documents()), len(sinks.chunks()))
    sinks.query("UPDATE dz_files SET stage = 'upload' WHERE outcome = 'stored'")
    assert await Supervisor(settings, once=True).serve() == 0
    assert (sinks.object_keys(), len(sinks.documents()), len(sinks.chunks())) == before


async def test_a_file_deleted_before_it_is_read_ends_as_vanished(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """A recorded file that is gone when its turn comes: outcome vanished, nothing stored."""
    from daemon.embedders import create
    from daemon.embedders.pool import EmbedPool
    from daemon.ledger import Entry, Ledger
    from daemon.pipeline import process
    from daemon.sessions import Sessions
    from daemon.stages import Env

    path, settings = configure(tmp_path, database_url, s3_endpoint, bucket)
    async with Sessions(settings) as sessions:
        ledger = Ledger(sessions, ["docs"], "test", 30)
        await ledger.discover("docs", [Entry("gone.txt", 10, 1)])
        [row] = await ledger.claim(1)
        embedder = EmbedPool(create(settings.embedding), settings.embedding, 0)
        env = Env(settings, sessions, ledger, embedder)
        assert await process([row], env) == []
    assert (row.stage, row.outcome) == ("done", "vanished")
    assert env.counts == {"vanished": 1}
    assert Sinks(path).documents() == [] and Sinks(path).object_keys() == []


async def test_a_file_quarantined_after_its_upload_leaves_no_object(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """A document that cannot be read is uploaded before extraction fails: its object goes
    with it, so no object is left that no document names."""
    path, settings = configure(tmp_path, database_url, s3_endpoint, bucket)
    (tmp_path / "zones" / "docs" / "bad.docx").write_bytes(b"not a zip at all")
    assert await Supervisor(settings, once=True).serve() == 1
    sinks = Sinks(path)
    assert sinks.query("SELECT stage, object_key FROM dz_files")[0]["stage"] == "quarantined"
    assert sinks.query("SELECT object_key FROM dz_files")[0]["object_key"]
    assert sinks.object_keys() == []


async def test_an_object_another_zone_names_is_kept(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """Content shared by zones (the key template has no {zone}): a file quarantined in one
    zone does not take the object a document of another zone names."""
    from daemon.objectstore import object_key

    path, settings = configure(tmp_path, database_url, s3_endpoint, bucket)
    assert await Supervisor(settings, once=True).serve() == 0  # the schema, nothing else
    body = b"not a zip at all"
    (tmp_path / "zones" / "docs" / "bad.docx").write_bytes(body)
    key = object_key(settings.storage.key_template, doc_type="document", zone="docs",
                     sha256=hashlib.sha256(body).hexdigest(), name="bad.docx")
    url = f"s3://{bucket}/dz/{key}"
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=bucket, Key=f"dz/{key}",
                                                            Body=body)
    Sinks(path).query(
        "INSERT INTO documents (zone, doc_type, source_path, object_url, sha256, size_bytes) "
        "VALUES ('other', 'document', 'bad.docx', $1, $2, 16) RETURNING id",
        url, hashlib.sha256(body).hexdigest())
    assert await Supervisor(settings, once=True).serve() == 1
    assert Sinks(path).object_keys() == [f"dz/{key}"]
