"""Retrieval quality and search latency.

    python -m bench.retrieval [--models hashing,minilm] [--chunks 10000,100000]
        [--modes vector,text,hybrid] [--text-weight 1.5] [--stores pgvector,real]

Quality: the generated corpus of `bench/retrieval_corpus.py` (320 documents, 80 queries) goes
through the daemon (`--once`, embedded Postgres), then every query through `daemon.search`;
per model, search mode (vector, text, hybrid) and query kind: recall@5 (relevant documents
among the first 5, out of 5) and MRR (1 / rank of the first relevant document, 0 when none is
in the first 10).
Latency: a fresh database (dropped afterwards) filled with N synthetic chunks (N/10
documents), 30 queries each timed in-process (after 5 untimed), per mode: pgvector + HNSW
(embedded Postgres) and real[] (the server at DZ_BENCH_DATABASE_URL, default 127.0.0.1:5432,
which has no pgvector here).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import yaml

from bench import infra
from bench.retrieval_corpus import Query, write
from daemon import config
from daemon import search as searching
from daemon.database import Database, sql, start_embedded
from daemon.embedders import create
from daemon.embedders.hashing import HashingEmbedder
from daemon.search import Query as Search
from daemon.search import search

MODELS = {"hashing": {"provider": "hashing", "model": "hashing"},
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


def ingest(work: Path, model: str) -> tuple[Path, dict[str, str], list[Query]]:
    """The corpus dropped and processed by `--once` with `model`; its config and answers."""
    topics, queries = write(work / "zone")
    path = write_config(work, "embedded", MODELS[model])
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "daemon", "--once", "--config", str(path),
                    "--log-format", "json"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    print(f"  {model}: ingested {len(topics)} documents in {time.monotonic() - started:.1f} s")
    return path, topics, queries


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
    parser.add_argument("--models", default="hashing,minilm", help="'' to skip quality")
    parser.add_argument("--chunks", default="10000,100000")
    parser.add_argument("--stores", default="pgvector,real", help="latency: where")
    parser.add_argument("--modes", default=",".join(MODES), help="search modes to measure")
    parser.add_argument("--text-weight", type=float, default=searching.TEXT_WEIGHT,
                        help="hybrid: the weight of the text ranking in the fusion")
    args = parser.parse_args(argv)
    searching.TEXT_WEIGHT = args.text_weight
    modes = [m for m in args.modes.split(",") if m]
    work = Path(tempfile.mkdtemp(prefix="dz-eval-"))
    report = "\n".join([*quality_rows(work, [m for m in args.models.split(",") if m], modes), "",
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
