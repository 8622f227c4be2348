"""Search by words, by meaning and both (hybrid), on pgvector and on real[] alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.database import Database
from daemon.embedders.hashing import HashingEmbedder
from daemon.errors import UsageError
from daemon.search import Query, search
from tests.helpers import settings_for

EMBEDDER = HashingEmbedder(384)
QUERY = "glacier salinity"
NEAR = EMBEDDER.embed([QUERY])[0]
SOME = "A glacier, and nothing more."


async def stored(db: Database, chunks: dict[str, tuple[str, Any]]) -> None:
    """One document per name (zone `a`, or `b` for names starting with b), its one chunk."""
    rows = []
    for i, (name, (text, vector)) in enumerate(chunks.items()):
        doc = await db.pool.fetchval(
            "INSERT INTO documents (zone, doc_type, source_path, object_url, sha256, size_bytes) "
            "VALUES ($1, 'd', $2, 'file:///o/' || $2, repeat($3, 64), 1) RETURNING id",
            "b" if name.startswith("b") else "a", name, "0123456789"[i])
        rows.append((doc, 0, "k", "d", text, 0, vector, EMBEDDER.name))
    async with db.pool.acquire() as conn:
        assert await db.copy_embeddings(conn, rows) == len(rows)


async def found(db: Database, mode: str, text: str = QUERY, **filters: Any) -> list[Any]:
    async with db.pool.acquire() as conn:
        return await search(conn, EMBEDDER, Query(text, mode=mode, **filters), db.vector)


@pytest.fixture
async def db(tmp_path: Path, database_url: str) -> Any:
    """A database with: `words.txt`, the query's words (stemmed otherwise) but a vector opposite
    to the query's; `near.txt`, other words but the query's own vector; `away.txt`, neither
    (a vector opposite to the query's); `both.txt`, the words and a vector near the query;
    `some.txt`, one of the two words and its own (hashing) vector, near the query's."""
    async with Database(settings_for(tmp_path, database_url)) as database:
        await stored(database, {
            "words.txt": ("Salinity of the glaciers was measured at dawn.", -NEAR),
            "near.txt": ("Nothing in common with the question here.", NEAR),
            "away.txt": ("Unrelated notes on bread baking.", -NEAR),
            "both.txt": ("glacier salinity glacier salinity", NEAR + 0.01 * np.ones(384)),
            "some.txt": (SOME, EMBEDDER.embed([SOME])[0]),
        })
        yield database


async def test_text_mode_finds_the_words_stemmed_best_match_first(db: Database) -> None:
    """Only chunks holding the query's words (any form: glaciers, glacier) come, the denser
    first, each with its rank and no similarity."""
    hits = await found(db, "text")
    assert [h.source_path for h in hits] == ["both.txt", "words.txt"]
    assert all(h.text_rank and h.similarity is None and h.mode == "text" for h in hits)
    assert hits[0].text_rank > hits[1].text_rank


async def test_vector_mode_shows_nothing_at_or_below_zero_similarity(db: Database) -> None:
    """The opposite vectors (similarity -1) are not shown, however few hits remain."""
    hits = await found(db, "vector")
    assert {h.source_path for h in hits} == {"near.txt", "both.txt", "some.txt"}
    assert all(h.similarity is not None and h.similarity > 0 and h.score == h.similarity
               for h in hits)


async def test_hybrid_fuses_both_rankings_words_weighing_more(db: Database) -> None:
    """In both lists first (some of the words count, in hybrid, for a near chunk: text mode
    leaves it out); words only outranks meaning only; neither is absent."""
    hits = await found(db, "hybrid")
    assert [h.source_path for h in hits] == ["both.txt", "some.txt", "words.txt", "near.txt"]
    assert all(h.similarity and h.text_rank for h in hits[:2])
    assert hits[2].similarity is None and hits[3].text_rank is None
    assert hits[0].score > hits[1].score > hits[2].score > hits[3].score


async def test_a_negated_or_phrase_query_is_never_relaxed_to_some_words(db: Database) -> None:
    """-not and phrases mean what they say in hybrid too: some of the words earn no text rank
    (some.txt comes by its vector alone)."""
    for text in ("glacier salinity -dawn", '"glacier salinity"', "glacier"):
        hits = {h.source_path: h for h in await found(db, "hybrid", text=text)}
        assert next(iter(hits)) == "both.txt", (text, list(hits))
        assert hits["some.txt"].text_rank is None if " " in text else hits["some.txt"].text_rank


async def test_hits_carry_an_excerpt_with_the_query_words_marked(db: Database) -> None:
    hits = await found(db, "hybrid")
    excerpts = {h.source_path: h.excerpt for h in hits}
    assert excerpts["words.txt"].startswith("**Salinity** of the **glaciers** was measured")
    assert excerpts["near.txt"].startswith("Nothing in common with the question")


async def test_filters_and_search_syntax_hold_in_text_mode(db: Database) -> None:
    """--zone narrows word matches; websearch syntax: "-word" excludes."""
    assert [h.source_path for h in await found(db, "text", zone="a")] == ["words.txt"]
    assert [h.source_path for h in await found(db, "vector", zone="a")] == ["near.txt",
                                                                           "some.txt"]
    excluded = await found(db, "text", text="glacier -dawn")
    assert [h.source_path for h in excluded] == ["both.txt", "some.txt"]


@pytest.mark.parametrize("text", ["", "   ", "the of and", "?!"])
async def test_a_query_without_a_searchable_word_is_a_usage_error(db: Database,
                                                                    text: str) -> None:
    for mode in ("hybrid", "vector", "text"):
        with pytest.raises(UsageError, match="nothing to search for"):
            await found(db, mode, text=text)


async def test_the_words_column_is_generated_and_indexed(db: Database) -> None:
    """content_words is computed by the server from the COPYed text, with a GIN index."""
    words = await db.pool.fetchval(
        "SELECT content_words::text FROM document_embeddings e JOIN documents d "
        "ON d.id = e.document_id WHERE d.source_path = 'words.txt'")
    assert "'glacier'" in words and "'salin'" in words and "'the'" not in words
    method = await db.pool.fetchval(
        "SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam "
        "WHERE c.relname = 'document_embeddings_words'")
    assert method == "gin"
