"""What a vector index costs Postgres on the embedded server, and what search gets for it.

    python -m bench.vector_index [--chunks 40000] [--queries 200] [--data corpus|text|random]
        [--variants none,hnsw,hnsw-efc32,hnsw-m8,halfvec,bit,ivfflat]
        [--ef-search 40,200,400,1000] [--probes 5,20]

A fresh embedded Postgres (pgserver + pgvector, through the daemon's own `start_embedded`) in a
temporary folder, stopped at the end. Rows are what the daemon stores: files' text extracted by
daemon/formats.py, chunked by daemon/chunking.py (1,000 chars, overlap 100), embedded by the
default hashing embedder (384-d), in the daemon's schema, one binary COPY per file
(daemon/pgcopy.py). The files: `--data corpus`, bench/corpus.py's (Zipf-drawn words with no
topics: every chunk is about as near to a query as the next); `--data text`, real text files
(.py .md .rst .txt) under `--text-root` (default: this Python's site-packages), every 20th
left out to draw queries from; `--data random`, unit-length random normal vectors.

Per variant, on a fresh `document_embeddings` table:

* insert: the index is created on the empty table, then all N chunks are COPYed (ivfflat needs
  data to train on: built over the first half, then the second half is inserted);
* search: the daemon's query (queries.sql `search_vector`, top 10 asks for 80 rows with
  `hnsw.ef_search` 80, as daemon/search.py does); recall@10 of its first 10 rows against an
  exact scan (index scans off), counting a row found when its distance is within the exact
  10th's (ties); p50/p95 of the query's round trip, after one warm-up pass; then again with
  each other `--ef-search` (hnsw) or `--probes` (ivfflat) value. The planner may scan the
  table instead of using the index (ivfflat with many probes): such recalls say "(scan)".
  Every search is planned for its own settings and vector (`plan_cache_mode =
  force_custom_plan`): asyncpg prepares the query, and after five runs Postgres may switch to
  a generic plan, which for this query never uses a vector index (an exact scan, recall 1.0);
  it did so with ivfflat at 40,000 chunks, with hnsw only on small tables (3,000);
* build: the index dropped and built again over the N rows, with the server's defaults
  (maintenance_work_mem 64MB, 2 parallel workers) and with 512MB and 1 worker.

CPU is the server's: the postmaster's process tree (utime + stime of every live process plus
the postmaster's cutime + cstime for the exited ones, bench/cpu.py), before and after each
phase, after a CHECKPOINT; its idle background work is in it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import platform
import random
import statistics
import sys
import sysconfig
import tempfile
import time
from collections.abc import Awaitable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt
from pgvector.asyncpg import register_vector

from bench import corpus
from bench.cpu import Tree
from bench.infra import postmaster_pid
from daemon import formats, pgcopy
from daemon.chunking import Chunk, chunk_text
from daemon.database import EMBEDDING_COLUMNS, schema_sql, sql, start_embedded, with_database
from daemon.embedders import normalised
from daemon.embedders.hashing import HashingEmbedder
from daemon.search import CHUNKS_PER_DOCUMENT, EF_SEARCH_FLOOR, EF_SEARCH_MAX

DIM = 384
K = 10
WANTED = K * CHUNKS_PER_DOCUMENT  # the rows daemon/search.py asks for a top-10 search
# and the hnsw.ef_search it sets for them in hybrid search (--mode vector: 400 at least)
EF_SEARCH = min(EF_SEARCH_MAX, max(EF_SEARCH_FLOOR["hybrid"], WANTED))
RERANK = 4  # binary quantization: candidates per wanted row, re-ranked by exact cosine
BIG_BUILD = {"maintenance_work_mem": "512MB", "max_parallel_maintenance_workers": "1"}
TIE = 1e-6
TEXT_SUFFIXES = (".py", ".md", ".rst", ".txt")
HELD_OUT = 20  # --data text: every 20th file is kept out of the table for the queries
Rows = list[tuple[Any, ...]]
Floats = npt.NDArray[np.float32]

HALFVEC_QUERY = sql("search_vector").replace(
    "ORDER BY e.embedding <=> $1", f"ORDER BY e.embedding::halfvec({DIM}) <=> $1::halfvec({DIM})")
BIT_QUERY = f"""
SELECT e.document_id, e.chunk_index, e.content, 1 - (e.embedding <=> $1) AS score,
       d.zone, d.doc_type, d.source_path, d.object_url, d.metadata
  FROM (SELECT * FROM document_embeddings
         WHERE model = $2 AND ($4::text IS NULL OR doc_type = $4)
         ORDER BY binary_quantize(embedding)::bit({DIM}) <~> binary_quantize($1)
         LIMIT $5 * {RERANK}) e
  JOIN documents d ON d.id = e.document_id
 WHERE ($3::text IS NULL OR d.zone = $3)
 ORDER BY e.embedding <=> $1
 LIMIT $5"""


# -- data -----------------------------------------------------------------------------------

@dataclass
class Data:
    """Rows to store, one COPY per file, and query vectors."""

    model: str
    budget: int
    documents: list[tuple[int, str]] = field(default_factory=list)  # (id, doc_type)
    batches: list[Rows] = field(default_factory=list)
    queries: Floats = field(default_factory=lambda: np.zeros((0, DIM), np.float32))

    @property
    def chunks(self) -> int:
        return sum(len(batch) for batch in self.batches)


def daemon_chunks(name: str, raw: bytes) -> tuple[str, list[Chunk]]:
    """A file as the daemon reads it (any other suffix as plain text): its kind, its chunks."""
    kind = formats.kind_of(name, b"")
    kind = kind if kind in ("text", "markdown", "csv", "json", "html") else "text"
    try:
        return kind, chunk_text(formats.extract_bytes(raw, name, kind).text)
    except formats.UnreadableDocument:
        return kind, []


def add_file(data: Data, embedder: HashingEmbedder, name: str, raw: bytes) -> None:
    """One file's chunks as rows (the data's chunk budget cuts the last file short)."""
    kind, pieces = daemon_chunks(name, raw)
    pieces = pieces[:data.budget - data.chunks]
    if pieces:
        doc = len(data.documents) + 1
        vectors = embedder.embed([p.text for p in pieces])
        data.documents.append((doc, kind))
        data.batches.append([(doc, p.index, name, kind, p.text, p.start, v, embedder.name)
                             for p, v in zip(pieces, vectors, strict=True)])


def filled(files: Iterable[tuple[str, bytes]], chunks: int) -> tuple[Data, HashingEmbedder]:
    """Rows of the daemon's default embedder for the first files, up to `chunks` chunks."""
    embedder = HashingEmbedder(DIM)
    data = Data(embedder.name, chunks)
    for name, raw in files:
        if data.chunks >= chunks:
            break
        add_file(data, embedder, name, raw)
    return data, embedder


def corpus_data(chunks: int, queries: int, seed: int) -> Data:
    """bench/corpus.py files; queries of 2-5 words and of a sentence, alternately."""
    files = ((corpus.relative_path(i, ext).as_posix(), text.encode())
             for i in itertools.count() for ext, text in [corpus.document(seed, i)])
    data, embedder = filled(files, chunks)
    rng = random.Random(f"{seed}:queries")
    data.queries = embedder.embed([" ".join(corpus.words(rng, 2, 5)) if i % 2 == 0
                                   else corpus.sentence(rng) for i in range(queries)])
    return data


def query_from(rng: random.Random, path: Path) -> list[str]:
    """A run of 3-20 words from one chunk of the file, or nothing when it has fewer words."""
    pieces = daemon_chunks(path.name, path.read_bytes())[1]
    words = rng.choice(pieces).text.split() if pieces else []
    if len(words) < 3:
        return []
    length = rng.randint(3, min(20, len(words)))
    start = rng.randrange(len(words) - length + 1)
    return [" ".join(words[start:start + length])]


def text_data(chunks: int, queries: int, seed: int, root: Path) -> Data:
    """Real text files under `root` in path order; every HELD_OUT-th file is left out to
    draw queries from: a run of 3-20 words from one of its chunks."""
    paths = sorted(p for p in root.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
    stored = [p for i, p in enumerate(paths) if i % HELD_OUT]
    data, embedder = filled(((p.relative_to(root).as_posix(), p.read_bytes())
                             for p in stored), chunks)
    rng, held = random.Random(f"{seed}:queries"), paths[::HELD_OUT]
    texts: list[str] = []
    while len(texts) < queries:
        texts += query_from(rng, rng.choice(held))
    data.queries = embedder.embed(texts)
    return data


def random_data(chunks: int, queries: int, seed: int, per_file: int = 20) -> Data:
    """Unit-length random normal vectors, `per_file` chunks a file: the hard case for ANN."""
    rng = np.random.default_rng(seed)
    vectors = normalised(rng.standard_normal((chunks, DIM)).astype(np.float32))
    data = Data(f"random-normal-{DIM}", chunks)
    for first in range(0, chunks, per_file):
        doc = first // per_file + 1
        data.documents.append((doc, "text"))
        data.batches.append([(doc, i - first, f"r/{doc}", "text", f"chunk {i}", 0, vectors[i],
                              data.model) for i in range(first, min(first + per_file, chunks))])
    data.queries = normalised(rng.standard_normal((queries, DIM)).astype(np.float32))
    return data


# -- variants -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    index: str | None  # what follows `CREATE INDEX vi ON document_embeddings`
    knob: str | None = "hnsw.ef_search"  # the search-time setting, SET LOCAL per query
    setting: int = EF_SEARCH  # its value: the daemon's for hnsw
    query: str = field(default_factory=lambda: sql("search_vector"))
    since: tuple[int, ...] = (0, 5, 0)  # the first pgvector version that has it
    trained: bool = False  # built over the first half of the rows, then the rest inserted

    def search_set(self, value: int | None = None) -> str:
        return f"SET LOCAL {self.knob} = {value or self.setting}" if self.knob else ""


def hnsw(m: int, efc: int, operand: str = "embedding vector_cosine_ops") -> str:
    return f"USING hnsw ({operand}) WITH (m = {m}, ef_construction = {efc})"


def variants(chunks: int) -> list[Variant]:
    lists = max(1, chunks // 1000)
    return [
        Variant("none", "no index (exact scan)", None, knob=None),
        Variant("hnsw", "hnsw m16 efc64 (daemon)", hnsw(16, 64)),
        Variant("hnsw-efc32", "hnsw m16 efc32", hnsw(16, 32)),
        Variant("hnsw-m8", "hnsw m8 efc32", hnsw(8, 32)),
        Variant("halfvec", "hnsw halfvec m16 efc64",
                hnsw(16, 64, f"(embedding::halfvec({DIM})) halfvec_cosine_ops"),
                query=HALFVEC_QUERY, since=(0, 7, 0)),
        Variant("bit", f"hnsw bit m16 efc64 + rerank {RERANK}x",
                hnsw(16, 64, f"(binary_quantize(embedding)::bit({DIM})) bit_hamming_ops"),
                setting=min(1000, RERANK * WANTED), query=BIT_QUERY, since=(0, 7, 0)),
        Variant("ivfflat", f"ivfflat lists {lists}",
                f"USING ivfflat (embedding vector_cosine_ops) WITH (lists = {lists})",
                knob="ivfflat.probes", setting=10, trained=True),
    ]


# -- measuring ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cost:
    cpu_s: float
    wall_s: float


@dataclass(frozen=True)
class Search:
    recall: float
    p50_ms: float
    p95_ms: float
    indexed: bool  # whether the planner used the index (else it scanned the table: exact)

    def recall_cell(self, variant: Variant) -> str:
        return f"{self.recall:.3f}" + ("" if self.indexed or not variant.index else " (scan)")


@dataclass
class Result:
    variant: Variant
    inserted: int = 0
    insert: Cost | None = None
    builds: list[Cost] = field(default_factory=list)  # server defaults, then BIG_BUILD
    search: Search = Search(0.0, 0.0, 0.0, False)
    bulk: Search | None = None
    size_mb: float = 0.0
    sweep: dict[int, Search] = field(default_factory=dict)  # knob value -> search


async def cost(conn: asyncpg.Connection, pgdata: Path, work: Awaitable[Any]) -> Cost:
    """The server's CPU seconds and the wall seconds `work` takes, after a checkpoint."""
    await conn.execute("CHECKPOINT")
    meter = Tree("postgres", lambda: postmaster_pid(pgdata))
    meter.sample(begin=True)
    started = time.perf_counter()
    await work
    wall = time.perf_counter() - started
    meter.sample()
    return Cost(meter.seconds(), wall)


async def load(conn: asyncpg.Connection, batches: Sequence[Rows]) -> None:
    """One binary COPY per file, as the daemon's store stage does (autocommit: one each)."""
    for batch in batches:
        await conn.copy_to_table("document_embeddings", source=pgcopy.stream(batch, True, [0]),
                                 columns=EMBEDDING_COLUMNS, format="binary")


async def build(conn: asyncpg.Connection, variant: Variant, settings: dict[str, str]) -> None:
    for name, value in settings.items():
        await conn.execute(f"SET {name} = '{value}'")
    await conn.execute(f"CREATE INDEX vi ON document_embeddings {variant.index}")
    for name in settings:
        await conn.execute(f"RESET {name}")


async def nearest(conn: asyncpg.Connection, query: str, settings: str, probe: Floats,
                  model: str, limit: int = WANTED) -> list[asyncpg.Record]:
    """The search's rows, best first, with `settings` SET LOCAL for it."""
    async with conn.transaction():
        if settings:
            await conn.execute(settings)
        rows = await conn.fetch(query, probe, model, None, None, limit)
    return rows  # type: ignore[no-any-return]


async def exact_kth(conn: asyncpg.Connection, data: Data) -> list[float]:
    """The exact 10th-nearest distance of every query (a sequential scan each)."""
    found = []
    for probe in data.queries:
        rows = await nearest(conn, sql("search_vector"), "SET LOCAL enable_indexscan = off",
                             probe, data.model, K)
        found.append(1.0 - rows[-1]["score"])
    return found


async def searched(conn: asyncpg.Connection, variant: Variant, data: Data, kth: list[float],
                   value: int | None = None) -> Search:
    """recall@10 and latency over the queries, after an untimed warm-up pass; a row counts as
    found when its distance is within the exact 10th's (so ties count)."""
    settings = variant.search_set(value)
    indexed = await uses_index(conn, variant.query, settings, data.queries[0], data.model)
    for probe in data.queries:
        await nearest(conn, variant.query, settings, probe, data.model)
    recalls, times = [], []
    for probe, limit in zip(data.queries, kth, strict=True):
        started = time.perf_counter()
        rows = await nearest(conn, variant.query, settings, probe, data.model)
        times.append((time.perf_counter() - started) * 1000)
        recalls.append(sum(1.0 - r["score"] <= limit + TIE for r in rows[:K]) / K)
    return Search(statistics.mean(recalls), float(np.percentile(times, 50)),
                  float(np.percentile(times, 95)), indexed)


async def uses_index(conn: asyncpg.Connection, query: str, settings: str, probe: Floats,
                     model: str) -> bool:
    """Whether the planner takes the index `vi` for this search (it may prefer a scan)."""
    plan = await nearest(conn, f"EXPLAIN {query}", settings, probe, model)
    return any(" using vi " in line[0] for line in plan)


# -- one variant ----------------------------------------------------------------------------

async def fresh_table(conn: asyncpg.Connection) -> None:
    await conn.execute("DROP TABLE IF EXISTS document_embeddings")
    await conn.execute(schema_sql(f"vector({DIM})"))


async def index_mb(conn: asyncpg.Connection) -> float:
    size = await conn.fetchval("SELECT coalesce(pg_relation_size(to_regclass('vi')), 0)")
    return float(size) / 2**20


async def run_variant(conn: asyncpg.Connection, pgdata: Path, variant: Variant, data: Data,
                      kth: list[float], sweep: Sequence[int]) -> Result:
    """Insert with the index in place, search (at each `sweep` value of the knob too), then
    build it twice over the loaded rows and search once more."""
    await fresh_table(conn)
    half = len(data.batches) // 2 if variant.trained else 0
    await load(conn, data.batches[:half])
    if variant.index:
        await conn.execute(f"CREATE INDEX vi ON document_embeddings {variant.index}")
    result = Result(variant, inserted=sum(len(b) for b in data.batches[half:]))
    result.insert = await cost(conn, pgdata, load(conn, data.batches[half:]))
    await conn.execute("VACUUM ANALYZE document_embeddings")
    result.size_mb = await index_mb(conn)
    result.search = await searched(conn, variant, data, kth)
    for value in sweep if variant.knob else ():
        result.sweep[value] = await searched(conn, variant, data, kth, value)
    if variant.index:
        for settings in ({}, BIG_BUILD):
            await conn.execute("DROP INDEX vi")
            result.builds.append(await cost(conn, pgdata, build(conn, variant, settings)))
        result.bulk = await searched(conn, variant, data, kth)
    return result


# -- the server -----------------------------------------------------------------------------

@contextlib.contextmanager
def embedded_server() -> Iterator[tuple[str, Path]]:
    """A fresh embedded Postgres in a temporary folder: (admin URI, pgdata); stopped after."""
    from tests.helpers import stop_embedded

    with tempfile.TemporaryDirectory(prefix="dz-vector-index-") as folder:
        pgdata = Path(folder) / "pg"
        try:
            yield start_embedded(Path(folder)), pgdata
        finally:
            stop_embedded(pgdata)
            # pgserver's exit hook would stop it again and log that it could not
            logging.getLogger("pgserver").setLevel(logging.CRITICAL)


async def open_database(admin: str, data: Data) -> asyncpg.Connection:
    """A `vector_index` database with the daemon's schema and one documents row a file."""
    conn = await asyncpg.connect(admin)
    await conn.execute("CREATE DATABASE vector_index")
    await conn.close()
    conn = await asyncpg.connect(with_database(admin, "vector_index"))
    await conn.execute("CREATE EXTENSION vector")
    await conn.execute("SET plan_cache_mode = force_custom_plan")  # see the module's docstring
    await register_vector(conn)
    await fresh_table(conn)
    await conn.executemany(
        "INSERT INTO documents (id, zone, doc_type, source_path, object_url, sha256, size_bytes)"
        " VALUES ($1, 'bench', $2, $3, $3, $4, 0)",
        [(doc, kind, f"bench/{doc}", hashlib.sha256(str(doc).encode()).hexdigest())
         for doc, kind in data.documents])
    return conn


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


# -- report ---------------------------------------------------------------------------------

HEADER = ("| variant | insert CPU ms/chunk | insert wall ms/chunk | build CPU ms/chunk, 64MB 2w "
          "(wall s) | build CPU ms/chunk, 512MB 1w (wall s) | recall@10 (incr / bulk) | p50 ms "
          "| p95 ms | index MB |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")


def ms_per(cost: Cost | None, chunks: int) -> str:
    return "-" if cost is None or not chunks else f"{cost.cpu_s * 1000 / chunks:.2f}"


def label(variant: Variant) -> str:
    return variant.label + (f", {variant.knob} {variant.setting}" if variant.knob else "")


def row(result: Result, chunks: int) -> str:
    """One row of HEADER's table; the build columns are per chunk of all `chunks`."""
    insert, found = result.insert, result.search
    builds = [f"{ms_per(b, chunks)} ({b.wall_s:.1f})" for b in result.builds] or ["-", "-"]
    bulk = "" if result.bulk is None else f" / {result.bulk.recall_cell(result.variant)}"
    cells = [label(result.variant), ms_per(insert, result.inserted),
             "-" if insert is None else f"{insert.wall_s * 1000 / result.inserted:.2f}",
             *builds, f"{found.recall_cell(result.variant)}{bulk}", f"{found.p50_ms:.1f}",
             f"{found.p95_ms:.1f}", f"{result.size_mb:.1f}"]
    return "| " + " | ".join(cells) + " |"


def sweep_rows(results: Sequence[Result]) -> Iterator[str]:
    """recall@10 and p95 at other values of each variant's search knob."""
    yield "| variant | knob | value | recall@10 | p50 ms | p95 ms |"
    yield "| --- | --- | ---: | ---: | ---: | ---: |"
    for result in results:
        for value, found in result.sweep.items():
            yield (f"| {result.variant.label} | {result.variant.knob} | {value} | "
                   f"{found.recall_cell(result.variant)} | {found.p50_ms:.1f} | "
                   f"{found.p95_ms:.1f} |")


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 platform.processor())
    return f"{os.cpu_count()} cores ({model}), CPython {platform.python_version()}"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- main -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    keys: list[str]
    ef_search: list[int]
    probes: list[int]

    def sweep(self, variant: Variant) -> list[int]:
        values = self.probes if variant.knob == "ivfflat.probes" else self.ef_search
        return [] if variant.key == "bit" else [v for v in values if v != variant.setting]


async def bench(admin: str, pgdata: Path, data: Data, plan: Plan) -> list[Result]:
    conn = await open_database(admin, data)
    try:
        version = await conn.fetchval("SELECT extversion FROM pg_extension "
                                      "WHERE extname = 'vector'")
        say(f"{await conn.fetchval('SHOW server_version')}, pgvector {version}")
        await load(conn, data.batches)
        kth = await exact_kth(conn, data)
        results: list[Result] = []
        for variant in (v for v in variants(data.chunks) if v.key in plan.keys):
            if version_tuple(version) < variant.since:
                say(f"skipped {variant.label}: needs pgvector "
                    f"{'.'.join(map(str, variant.since))}, the server has {version}")
                continue
            say(f"{time.strftime('%H:%M:%S')} {variant.label} (load {os.getloadavg()[0]:.2f})")
            results.append(await run_variant(conn, pgdata, variant, data, kth,
                                             plan.sweep(variant)))
            say(row(results[-1], data.chunks))
        return results
    finally:
        await conn.close()


def numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=40_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--data", choices=("corpus", "text", "random"), default="corpus")
    parser.add_argument("--text-root", type=Path, default=Path(sysconfig.get_paths()["purelib"]),
                        help="--data text: a folder of text files (default: site-packages)")
    parser.add_argument("--variants", default=",".join(v.key for v in variants(1)))
    parser.add_argument("--ef-search", type=numbers, default=[40, 200, 400, 1000],
                        help="other hnsw.ef_search values to search with")
    parser.add_argument("--probes", type=numbers, default=[5, 20], help="other ivfflat.probes")
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args()


def make_data(args: argparse.Namespace) -> Data:
    if args.data == "text":
        return text_data(args.chunks, args.queries, args.seed, args.text_root)
    make = corpus_data if args.data == "corpus" else random_data
    return make(args.chunks, args.queries, args.seed)


def main() -> None:
    args = arguments()
    data = make_data(args)
    say(f"{data.chunks} chunks of {len(data.documents)} files, {len(data.queries)} queries")
    load_start = os.getloadavg()
    with embedded_server() as (admin, pgdata):
        plan = Plan(args.variants.split(","), args.ef_search, args.probes)
        results = asyncio.run(bench(admin, pgdata, data, plan))
    print(f"{date.today()}, {machine()}; data {args.data}, {data.chunks} chunks "
          f"({len(data.documents)} files), {len(data.queries)} queries; load average "
          f"{load_start[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end\n")
    print(HEADER)
    for result in results:
        print(row(result, data.chunks))
    print()
    print("\n".join(sweep_rows(results)))


if __name__ == "__main__":
    main()
