"""Search: the documents that best match a query, by meaning, by words, or both (hybrid).

* vector: the query is embedded by the configured embedder and compared only with chunks of
  that same model. With pgvector the nearest chunks come through the HNSW index (cosine
  distance); without it every chunk of the model is scored in SQL (slower, the same answer).
  Chunks at or below zero similarity are not near at all: never shown.
* text: Postgres full text over each chunk's words (schema v8's `content_words`, a GIN index),
  `websearch_to_tsquery` ranked by `ts_rank_cd`: every word must be there (as on the web).
* hybrid (the default): both lists, each document ranked by its best chunk, fused by reciprocal
  rank fusion: sum of weight / (RRF_K + rank). Words count TEXT_WEIGHT times a vector rank: the
  hashing embedder knows no meaning, and words a user types are the surest signal it has.
  When few documents hold every word, the text list goes on with those of the vector list that
  hold some of them (ranked after): a document that says "comet" but not "galaxy" is still
  about astronomy. (Only the vector list's chunks: all chunks with a common word cost too much.)

Chunks are fetched a few per wanted document, then each document keeps its best chunk; if too
many of them belonged to the same few documents, the search widens until it has enough. The
hits shown get an excerpt: their chunk cut around the query's words, those marked **so**.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import asyncpg

from daemon.database import sql
from daemon.embedders import Embedder
from daemon.errors import UsageError

CHUNKS_PER_DOCUMENT = 8
MAX_CANDIDATES = 100_000
MODES = ("hybrid", "vector", "text")
RRF_K = 60  # the constant of Cormack et al.: a rank-1 hit is worth little more than a rank-5
TEXT_WEIGHT = 1.5  # least for the best keyword recall@5, bench.retrieval (1.0: 0.99, 1.5: 1.00)
# hnsw.ef_search floors: vector alone needs a wide beam for its recall at 100k chunks
# (bench/README.md: 0.85 at 400 against 0.64 at 80); in hybrid the words make up for it.
EF_SEARCH_FLOOR = {"vector": 400, "hybrid": 80}
EF_SEARCH_MAX = 1000  # pgvector's limit

Fetch = Callable[[int], Awaitable[list[asyncpg.Record]]]


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
    mode: str = "vector"
    similarity: float | None = None  # the best chunk's cosine similarity, when it was near
    text_rank: float | None = None  # the best chunk's ts_rank_cd, when its words matched
    excerpt: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Query:
    text: str
    zone: str | None = None
    doc_type: str | None = None
    limit: int = 10
    mode: str = "hybrid"


async def search(conn: asyncpg.Connection, embedder: Embedder, query: Query,
                 vector: bool) -> list[Hit]:
    """The `query.limit` best documents, each with its best chunk and an excerpt, best first.
    A query with no searchable word (empty, stopwords only) is a UsageError."""
    words = await conn.fetchrow(sql("query_lexemes"), query.text)
    if not query.text.strip() or not words["words"]:
        raise UsageError(f"search: nothing to search for in {query.text!r}: give a word that "
                         "is not a stopword (the, of, and, ...)")
    if query.mode == "text":
        hits = _ranked(await _text(conn, embedder.name, query), "text")
    elif query.mode == "vector":
        hits = _ranked(await _vector(conn, embedder, query, vector), "vector")
    else:
        near = await _vector(conn, embedder, query, vector)
        hits = fuse(near, await _words_then_some(conn, embedder.name, query, words["every"],
                                                 near))
    return await _with_excerpts(conn, query.text, hits[:query.limit])


async def _vector(conn: asyncpg.Connection, embedder: Embedder, query: Query,
                  vector: bool) -> list[asyncpg.Record]:
    """Each document's nearest chunk, nearest first; none at or below zero similarity."""
    [embedding] = embedder.embed([query.text])
    probe = embedding if vector else embedding.tolist()
    args = (probe, embedder.name, query.zone, query.doc_type)

    async def fetch(wanted: int) -> list[asyncpg.Record]:
        if not vector:
            return await conn.fetch(sql("search_array"), *args, wanted)  # type: ignore[no-any-return]
        ef_search = min(EF_SEARCH_MAX, max(EF_SEARCH_FLOOR[query.mode], wanted))
        async with conn.transaction():
            # the index returns at most ef_search candidates before filters; a generic plan
            # (asyncpg prepares, Postgres may switch after five runs) would skip the index
            await conn.execute(f"SET LOCAL hnsw.ef_search = {ef_search}; "
                               "SET LOCAL plan_cache_mode = force_custom_plan")
            return await conn.fetch(sql("search_vector"), *args, wanted)  # type: ignore[no-any-return]
    return [row for row in await _per_document(fetch, query.limit) if row["score"] > 0]


async def _text(conn: asyncpg.Connection, model: str, query: Query) -> list[asyncpg.Record]:
    """Each matching document's best chunk by words, best first."""
    async def fetch(wanted: int) -> list[asyncpg.Record]:
        return await conn.fetch(sql("search_text"), query.text, model,  # type: ignore[no-any-return]
                                query.zone, query.doc_type, wanted)
    return await _per_document(fetch, query.limit)


async def _words_then_some(conn: asyncpg.Connection, model: str, query: Query, every: str,
                           near: list[asyncpg.Record]) -> list[Any]:
    """The text ranking of hybrid: documents with every word, then, when those are few, the
    documents of `near` whose chunk has some of them."""
    matching: list[Any] = await _text(conn, model, query)
    if len(matching) >= 2 * query.limit:
        return matching
    seen = {row["document_id"] for row in matching}
    others = [row for row in near if row["document_id"] not in seen]
    return matching + (await _some_words(conn, every, others) if others else [])


async def _some_words(conn: asyncpg.Connection, every: str,
                      near: list[asyncpg.Record]) -> list[dict[str, Any]]:
    """Those of the `near` chunks with some of the query's words but not all, best first, each
    scored by its text rank; none for a query of one word, or with -not or "a phrase" (those
    mean every word)."""
    if " & " not in every or re.search(r"[!<|]", every):
        return []
    ranks = await conn.fetch(sql("search_text_some"), every.replace(" & ", " | "), every,
                             [row["content"] for row in near])
    rows = [{**dict(near[rank["i"] - 1]), "score": rank["score"]} for rank in ranks]
    return sorted(rows, key=lambda row: -row["score"])


async def _per_document(fetch: Fetch, limit: int) -> list[asyncpg.Record]:
    """Rows best first, one per document (its best chunk); asks for more rows while fewer than
    `limit` documents came and there may be more."""
    wanted = limit * CHUNKS_PER_DOCUMENT
    while True:
        rows = await fetch(wanted)
        best = best_rows(rows)
        if len(best) >= limit or len(rows) < wanted or wanted >= MAX_CANDIDATES:
            return best
        wanted *= 4


def best_rows(rows: list[Any]) -> list[Any]:
    """Rows come best first: the first row of each document is its best chunk."""
    best: dict[int, Any] = {}
    for row in rows:
        best.setdefault(row["document_id"], row)
    return list(best.values())


def _ranked(rows: list[Any], mode: str) -> list[Hit]:
    vector = mode == "vector"
    return [replace(_hit(row), mode=mode, similarity=_round(row["score"]) if vector else None,
                    text_rank=None if vector else _round(row["score"])) for row in rows]


def fuse(near: list[Any], matching: list[Any]) -> list[Hit]:
    """Reciprocal rank fusion of two per-document rankings; a document's hit shows the chunk
    its words matched (that one has the query's words to mark), else its nearest chunk."""
    scores: dict[int, float] = {}
    for weight, rows in ((1.0, near), (TEXT_WEIGHT, matching)):
        for rank, row in enumerate(rows, 1):
            scores[row["document_id"]] = scores.get(row["document_id"], 0.0) + weight / (
                RRF_K + rank)
    vector = {row["document_id"]: row for row in near}
    text = {row["document_id"]: row for row in matching}
    order = sorted(scores, key=lambda doc: -scores[doc])
    return [replace(_hit(text.get(doc) or vector[doc]), mode="hybrid",
                    score=round(scores[doc], 6), similarity=_score(vector.get(doc)),
                    text_rank=_score(text.get(doc))) for doc in order]


def _score(row: Any) -> float | None:
    return None if row is None else _round(row["score"])


def _round(value: float) -> float:
    return round(float(value), 4)


def _hit(row: Any) -> Hit:
    metadata = json.loads(row["metadata"]) if isinstance(row["metadata"], str) else {}
    return Hit(score=_round(row["score"]), zone=row["zone"], doc_type=row["doc_type"],
               source_path=row["source_path"], object_url=row["object_url"],
               chunk_index=row["chunk_index"], chunk=row["content"],
               metadata=metadata)


async def _with_excerpts(conn: asyncpg.Connection, text: str, hits: list[Hit]) -> list[Hit]:
    if not hits:
        return hits
    excerpts = await conn.fetch(sql("search_excerpts"), [h.chunk for h in hits], text)
    return [replace(hit, excerpt=" ".join(row[0].split()))
            for hit, row in zip(hits, excerpts, strict=True)]
