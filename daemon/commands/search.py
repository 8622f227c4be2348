"""`search`: the documents that best match a query, best first, each with an excerpt of its best
chunk (the work is in `daemon.search`; this is the command around it)."""

from __future__ import annotations

import json
import sys

from daemon.commands import FAILURES, fail
from daemon.config import Settings
from daemon.database import Database
from daemon.embedders import create as create_embedder
from daemon.errors import EXIT_OK, UsageError
from daemon.search import Hit, Query, search


async def run(settings: Settings, query: Query, as_json: bool) -> int:
    try:
        if not query.text.strip():  # said before the database is opened (or started)
            raise UsageError("search: the query is empty: give a word to look for")
        async with Database(settings) as db, db.pool.acquire() as conn:
            hits = await search(conn, create_embedder(settings.embedding), query, db.vector)
    except FAILURES as exc:
        return fail(exc, settings, "search")
    for rank, hit in enumerate(hits, 1):
        print(json.dumps(hit.as_json()) if as_json else render_hit(rank, hit))
    if not hits and not as_json:
        print("no documents match", file=sys.stderr)
    return EXIT_OK


def render_hit(rank: int, hit: Hit) -> str:
    """Rank, score and title; where the document is; the excerpt, query words **marked**."""
    title = hit.metadata.get("title") or hit.source_path
    excerpt = hit.excerpt or " ".join(hit.chunk.split())[:200]
    return (f"{rank:>2}. {hit.score:.4f}  {title}\n    {hit.zone}/{hit.source_path}  "
            f"{hit.object_url}\n    {excerpt}")
