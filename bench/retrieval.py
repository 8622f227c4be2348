"""Retrieval quality and search latency.

    python -m bench.retrieval [--models hashing,onnx,minilm] [--chunks 10000,100000]
        [--modes vector,text,hybrid] [--text-weight 1.5] [--stores pgvector,real]

Quality: the generated corpus of `bench/retrieval_corpus.py` (320 documents, 80 queries) goes
through the daemon (`--once`, embedded Postgres), then every query through `daemon.search`;
per model, search mode (vector, text, hybrid) and query kind: recall@5 (relevant documents
among the first 5, out of 5) and MRR (1 / rank of the first relevant document, 0 when none is
in the first 10).
Ingest: per model, 160 longer documents (~1,000-character chunks, ~200 tokens each) through
`--once` (one embedding worker on 2 cores): chunks per second of the whole run, start-up
included; then the same chunks embedded alone in a fresh process (one thread, after one
warm-up call): chunks per CPU-second, and that process's PSS after (an upper bound for a
worker's: workers fork from a server that shares the daemon's imports). `minilm`
(sentence-transformers, torch) is left out when the [semantic] extra is not installed; `onnx`
fetches its model first if it is not in its folder.
Latency: a fresh database (dropped afterwards) filled with N synthetic chunks (N/10
documents), 30 queries each timed in-process (after 5 untimed), per mode: pgvector + HNSW
(embedded Postgres) and real[] (the server at DZ_BENCH_DATABASE_URL, default 127.0.0.1:5432,
which has no pgvector here).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import yaml

from bench import infra
from bench.infra import pss_bytes
from bench.retrieval_corpus import Query, long_documents, write
from daemon import config
from daemon import search as searching
from daemon.chunking import chunk_text
from daemon.config import ONNX_MODEL, EmbeddingSettings, default_model_dir
from daemon.database import Database, sql, start_embedded
from daemon.embedders import create
from daemon.embedders.fetch import fetch, is_complete
from daemon.embedders.hashing import HashingEmbedder
from daemon.search import Query as Search
from daemon.search import search

MODELS: dict[str, dict[str, Any]] = {
    "hashing": {"provider": "hashing", "model": "hashing"},
    "onnx": {"provider": "onnx"},  # all-MiniLM-L6-v2-q8, model_dir filled in by `available`
    "minilm": {"provider": "sentence", "model": "all-MiniLM-L6-v2"}}
REPO = Path(__file__).resolve().parent.parent
LATENCY_QUERIES = 30
WARM_UP = 5  # queries before those timed (each mode: the first would pay for a cold cache)
MODES = ("vector", "text", "hybrid")


def write_config(work: Path, database: str, embedding: dict[str, Any]) -> Path:
    data = {"state_dir": "var", "database": {"url": database},
            "zones": [{"name": "eval", "path": "zone", "settle_ms": 0, "after": "keep"}],
            "storage": {"url": "var/objects"}, "embedding": {**embedding, "dim": 384}}
    (work / "zone").mkdir(parents=True, exist_ok=True)
    path = work / "dropzone.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def available(models: list[str]) -> list[str]:
    """The models this venv can run (the onnx model fetched if missing), saying why not."""
    found = []
    for model in models:
        if model == "minilm" and importlib.util.find_spec("sentence_transformers") is None:
            print("  minilm: left out, the [semantic] extra (torch) is not installed")
            continue
        if model == "onnx":
            folder = Path(os.environ.get("DZ_TEST_MODEL_DIR") or default_model_dir(ONNX_MODEL))
            if not is_complete(folder):
                fetch("minilm", folder)
            MODELS["onnx"]["model_dir"] = str(folder)
        found.append(model)
    return found


def once(work: Path, model: str) -> tuple[Path, float, infra.PeakPss]:
    """`--once` over work/zone with `model`: the config, seconds, and the peak PSS."""
    path = write_config(work, "embedded", MODELS[model])
    memory = infra.PeakPss()
    run = infra.run_timed([sys.executable, "-m", "daemon", "--once", "--config", str(path),
                           "--log-format", "json"], os.environ, work / "once.log", 1800,
                          cwd=REPO, watches=[memory])
    assert run.code == 0, f"--once failed: {run.log}"
    return path, run.seconds, memory


def ingest(work: Path, model: str) -> tuple[Path, dict[str, str], list[Query]]:
    """The corpus dropped and processed by `--once` with `model`; its config and answers."""
    topics, queries = write(work / "zone")
    path, seconds, _ = once(work, model)
    print(f"  {model}: ingested {len(topics)} documents in {seconds:.1f} s")
    return path, topics, queries


async def chunk_count(path: Path) -> int:
    async with Database(config.load(path)) as db, db.pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM document_embeddings"))


def embed_alone(embedding: dict[str, Any], zone: str) -> tuple[int, float, int]:
    """In a fresh process: the zone's chunks embedded one call per `batch_size`; chunks,
    CPU seconds (after a warm-up call), and the process's PSS after."""
    settings = EmbeddingSettings.model_validate({**embedding, "dim": 384})
    texts = [chunk.text for path in sorted(Path(zone).iterdir())
             for chunk in chunk_text(path.read_text(), settings.chunk_chars,
                                     settings.chunk_overlap)]
    embedder = create(settings)
    embedder.embed(texts[:1])
    started = time.process_time()
    embedder.embed(texts)
    return len(texts), time.process_time() - started, pss_bytes(os.getpid())


def speed_rows(work: Path, models: list[str]) -> list[str]:
    lines = ["| model | chunks | --once s | chunks/s (--once) | chunks per CPU-s (alone) "
             "| PSS MiB (alone) | peak PSS MiB of --once (by role) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    spawn = multiprocessing.get_context("spawn")
    for model in models:
        long_documents(work / model / "zone")
        path, seconds, memory = once(work / model, model)
        chunks = asyncio.run(chunk_count(path))
        with ProcessPoolExecutor(1, mp_context=spawn) as alone:
            count, cpu_s, pss = alone.submit(embed_alone, MODELS[model],
                                             str(work / model / "zone")).result()
        lines.append(f"| {model} | {chunks} | {seconds:.1f} | {chunks / seconds:.1f} | "
                     f"{count / cpu_s:.1f} | {pss / 2**20:.0f} | "
                     f"{memory.peak / 2**20:.0f} ({memory.breakdown()}) |")
        print(lines[-1])
    return lines


async def quality(path: Path, topics: dict[str, str], queries: list[Query],
                  mode: str) -> dict[str, Any]:
    """recall@5 and MRR per query kind."""
    settings = config.load(path)
    embedder = create(settings.embedding)
    scores: dict[str, list[tuple[float, float]]] = {}
    async with Database(settings) as db, db.pool.acquire() as conn:
        for query in queries:
            hits = await search(conn, embedder, Search(query.text, limit=10, mode=mode),
                                db.vector)
            found = [topics.get(h.source_path) == query.topic for h in hits]
            first = next((rank for rank, ok in enumerate(found, 1) if ok), None)
            scores.setdefault(query.kind, []).append((sum(found[:5]) / 5,
                                                      1 / first if first else 0.0))
    return {kind: (statistics.mean(r for r, _ in s), statistics.mean(m for _, m in s))
            for kind, s in scores.items()}


async def fill(url: str, chunks: int) -> None:
    """`chunks` synthetic chunks (10 per document) of the hashing model, through the daemon's
    own schema and COPY path (the HNSW index, if any, built after the load)."""
    settings = config.load(write_config(Path(tempfile.mkdtemp()), url, MODELS["hashing"]))
    embedder = HashingEmbedder(384)
    async with Database(settings) as db, db.pool.acquire() as conn:
        ids = await conn.fetch(
            "INSERT INTO documents (zone, doc_type, source_path, object_url, sha256, size_bytes) "
            "SELECT 'eval', 'document', 'doc-' || i, 'file:///x/' || i, "
            "encode(sha256(i::text::bytea), 'hex'), 1 FROM generate_series(1, $1) AS i "
            "RETURNING id", chunks // 10)
        texts = [f"chunk {i} about topic {i % 997} and subject {i % 331}" for i in range(chunks)]
        vectors = embedder.embed(texts)
        rows = [(ids[i // 10]["id"], i % 10, "k", "document", texts[i], 0, vectors[i],
                 embedder.name) for i in range(chunks)]
        if db.vector:  # built once over all rows: faster than growing it row by row
            await conn.execute("DROP INDEX IF EXISTS document_embeddings_hnsw")
        copied = await db.copy_embeddings(conn, rows)
        if db.vector:  # as the daemon builds it (index_build_mb), past its command timeout
            await conn.execute("SET maintenance_work_mem = '512MB'")
            await conn.execute(sql("hnsw_index"), timeout=3600)
        # as autovacuum soon would: plans see the real sizes, and the GIN index of the words has
        # its pending list merged (searched linearly until then: +10 ms at 100k: bench/README.md)
        await conn.execute("VACUUM ANALYZE")
        stored = await conn.fetchval("SELECT count(*) FROM document_embeddings")
        assert copied == stored == chunks, (copied, stored, chunks)


async def latency(url: str, mode: str) -> tuple[float, float]:
    """p50 and p95 milliseconds of a top-10 search."""
    settings = config.load(write_config(Path(tempfile.mkdtemp()), url, MODELS["hashing"]))
    embedder = HashingEmbedder(384)
    times = []
    async with Database(settings) as db, db.pool.acquire() as conn:
        for i in range(-WARM_UP, LATENCY_QUERIES):  # the first few untimed: pages read in
            n = i if i >= 0 else LATENCY_QUERIES - i
            started = time.perf_counter()
            await search(conn, embedder, Search(f"topic {n * 7} subject {n}", limit=10,
                                                mode=mode), db.vector)
            if i >= 0:
                times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


def databases(work: Path, stores: str) -> dict[str, str]:
    """Where latency is measured: pgvector (embedded) and real[] (the server)."""
    found = {}
    if "pgvector" in stores:
        found["pgvector + HNSW"] = start_embedded(work / "pg-state")
    if "real" in stores:
        found["real[] (no pgvector)"] = infra.server_url()
    return found


async def fresh(admin: str, tag: str) -> str:
    name = f"dz_eval_{tag}_{int(time.time())}"
    await admin_sql(admin, f'CREATE DATABASE "{name}"')
    return infra.with_database(admin, name)


async def admin_sql(admin: str, statement: str) -> None:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def quality_rows(work: Path, models: list[str], modes: list[str]) -> list[str]:
    lines = ["| model | mode | query kind | recall@5 | MRR |", "|---|---|---|---:|---:|"]
    for model in models:
        path, topics, queries = ingest(work / model, model)
        for mode in modes:
            for kind, (recall, mrr) in asyncio.run(quality(path, topics, queries, mode)).items():
                lines.append(f"| {model} | {mode} | {kind} | {recall:.2f} | {mrr:.2f} |")
                print(lines[-1])
    return lines


def latency_rows(work: Path, sizes: list[int], modes: list[str], stores: str) -> list[str]:
    lines = ["| store | mode | chunks | p50 ms | p95 ms |", "|---|---|---:|---:|---:|"]
    for store, admin in databases(work, stores).items():
        for chunks in sizes:
            url = asyncio.run(fresh(admin, str(chunks)))
            started = time.monotonic()
            asyncio.run(fill(url, chunks))
            print(f"  {store}: {chunks} chunks loaded in {time.monotonic() - started:.0f} s")
            for mode in modes:
                p50, p95 = asyncio.run(latency(url, mode))
                lines.append(f"| {store} | {mode} | {chunks:,} | {p50:.1f} | {p95:.1f} |")
                print(lines[-1])
            asyncio.run(admin_sql(admin, f'DROP DATABASE "{urlsplit(url).path[1:]}" WITH (FORCE)'))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval")
    parser.add_argument("--models", default="hashing,onnx,minilm",
                        help="'' to skip quality and ingest")
    parser.add_argument("--chunks", default="10000,100000", help="'' to skip latency")
    parser.add_argument("--stores", default="pgvector,real", help="latency: where")
    parser.add_argument("--modes", default=",".join(MODES), help="search modes to measure")
    parser.add_argument("--text-weight", type=float, default=searching.TEXT_WEIGHT,
                        help="hybrid: the weight of the text ranking in the fusion")
    args = parser.parse_args(argv)
    searching.TEXT_WEIGHT = args.text_weight
    modes = [m for m in args.modes.split(",") if m]
    work = Path(tempfile.mkdtemp(prefix="dz-eval-"))
    models = available([m for m in args.models.split(",") if m])
    report = "\n".join([*quality_rows(work / "quality", models, modes), "",
                        *speed_rows(work / "ingest", models), "",
                        *latency_rows(work, [int(c) for c in args.chunks.split(",") if c],
                                      modes, args.stores)])
    print(report)
    out = REPO / "bench" / "results" / f"{date.today()}.md"
    out.parent.mkdir(exist_ok=True)
    with out.open("a") as handle:
        handle.write(f"\n## retrieval ({' '.join(sys.argv)})\n\n{report}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
