"""Search: the documents nearest in meaning to a query, best chunk first.

The query is embedded by the configured embedder and compared only with chunks of that same
model. With pgvector the nearest chunks come through the HNSW index (cosine distance);
without it every chunk of the model is scored in SQL (slower, but the same answer). Chunks are
fetched a few per wanted document, then each document keeps its best chunk; if too many of
them belonged to the same few documents, the search widens until it has enough.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg

from daemon.database import sql
from daemon.embedders import Embedder

CHUNKS_PER_DOCUMENT = 8
MAX_CANDIDATES = 100_000


@dataclass(frozen=True)
class Hit:
    score: float
    zone: str
    doc_type: str
    source_path: str
    object_url: str
    chunk_index: int
    chunk: str
    metadata: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Query:
    text: str
    zone: str | None = None
    doc_type: str | None = None
    limit: int = 10


async def search(conn: asyncpg.Connection, embedder: Embedder, query: Query,
                 vector: bool) -> list[Hit]:
    """The `query.limit` best documents, each with its best chunk, best first."""
    [embedding] = embedder.embed([query.text])
    probe = embedding if vector else embedding.tolist()
    wanted = query.limit * CHUNKS_PER_DOCUMENT
    while True:
        rows = await _nearest(conn, probe, embedder.name, query, wanted, vector)
        hits = best_per_document(rows, query.limit)
        if len(hits) >= query.limit or len(rows) < wanted or wanted >= MAX_CANDIDATES:
            return hits
        wanted *= 4


async def _nearest(conn: asyncpg.Connection, probe: Any, model: str, query: Query,
                   wanted: int, vector: bool) -> list[asyncpg.Record]:
    args = (probe, model, query.zone, query.doc_type, wanted)
    if not vector:
        return await conn.fetch(sql("search_array"), *args)  # type: ignore[no-any-return]
    async with conn.transaction():
        # the index returns at most ef_search candidates before filters: widen it with `wanted`
        await conn.execute(f"SET LOCAL hnsw.ef_search = {min(1000, max(40, wanted))}")
        return await conn.fetch(sql("search_vector"), *args)  # type: ignore[no-any-return]


def best_per_document(rows: list[Any], limit: int) -> list[Hit]:
    """Rows come best first: the first row of each document is its best chunk."""
    hits: dict[int, Hit] = {}
    for row in rows:
        if row["document_id"] not in hits:
            hits[row["document_id"]] = _hit(row)
    return list(hits.values())[:limit]


def _hit(row: Any) -> Hit:
    metadata = json.loads(row["metadata"]) if isinstance(row["metadata"], str) else {}
    return Hit(score=round(float(row["score"]), 4), zone=row["zone"], doc_type=row["doc_type"],
               source_path=row["source_path"], object_url=row["object_url"],
               chunk_index=row["chunk_index"], chunk=row["content"],
               metadata=metadata)
