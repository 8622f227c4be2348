"""Re-embed: stored documents get the vectors of another model, their text read back from the
object store (nothing is uploaded again; documents, objects and MLflow are left as they are).

Documents that already have chunks of that model are skipped, so an interrupted run resumes
where it stopped. Each document's new chunks commit in one transaction; with `replace`, the
chunks of other models go in the same transaction. A document that cannot be read is
reported and skipped; the others go on.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from daemon import formats, sandbox
from daemon.config import Settings
from daemon.database import sql
from daemon.embedders import create
from daemon.embedders.pool import EmbedPool
from daemon.errors import DaemonError
from daemon.files import SourceFile, version_of
from daemon.formats import BinaryContent
from daemon.logs import get_logger
from daemon.retry import describe
from daemon.sessions import Connection, Sessions
from daemon.stages.extract import HEAD_BYTES, SANDBOXED, TEXT_KINDS

log = get_logger("dropzone.reembed")
PROGRESS_EVERY = 50


async def reembed(settings: Settings, zone: str | None, replace: bool) -> tuple[int, int]:
    """Re-embed every document still lacking the configured model; (done, failed)."""
    pool = EmbedPool(create(settings.embedding), settings.embedding,
                     settings.pipeline.cpu_workers)
    pool.start()
    try:
        async with Sessions(settings) as sessions:
            todo = await sessions.query(sql("reembed_todo"), pool.name, zone)
            log.info("reembed_started", model=pool.name, documents=len(todo))
            return await _all(todo, sessions, pool, replace)
    finally:
        pool.close()


async def _all(todo: list[Any], sessions: Sessions, pool: EmbedPool,
               replace: bool) -> tuple[int, int]:
    done = failed = 0
    for number, row in enumerate(todo, 1):
        try:
            chunks = await _one(row, sessions, pool, replace)
            done += 1
            log.debug("reembedded", document_id=row["id"], path=row["source_path"], chunks=chunks)
        except DaemonError as exc:
            failed += 1
            log.error("reembed_failed", document_id=row["id"], zone=row["zone"],
                      path=row["source_path"], error=describe(exc))
        if number % PROGRESS_EVERY == 0 or number == len(todo):
            log.info("reembed_progress", done=done, failed=failed, total=len(todo))
    return done, failed


async def _one(row: Any, sessions: Sessions, pool: EmbedPool, replace: bool) -> int:
    data = await sessions.get_object(row["object_key"])
    text = await text_of(row["source_path"], data, sessions)
    [(chunks, vectors)] = await pool.chunk_and_embed([text])
    key = sessions.store.full_key(row["object_key"])
    rows = [(row["id"], c.index, key, row["doc_type"], c.text, c.start, v, pool.name)
            for c, v in zip(chunks, vectors, strict=True)]

    async def write(conn: Connection) -> int:
        if replace:
            await conn.execute(sql("drop_other_models"), row["id"], pool.name)
        return await sessions.db.copy_embeddings(conn, rows)
    return await sessions.transaction(write)


async def text_of(name: str, data: bytes, sessions: Sessions) -> str:
    """The text of a stored object, read as the pipeline reads a dropped file."""
    kind = formats.kind_of(name, data[:HEAD_BYTES])
    if kind in SANDBOXED:
        return await _sandboxed(data, kind, sessions)
    if kind not in TEXT_KINDS:
        return ""
    try:
        return (await asyncio.to_thread(formats.extract_bytes, data, name, kind,
                                        sessions.settings.extraction.max_chars)).text
    except BinaryContent:
        return ""


async def _sandboxed(data: bytes, kind: str, sessions: Sessions) -> str:
    with tempfile.TemporaryDirectory(prefix="dz-reembed-") as folder:
        path = Path(folder) / f"document.{kind}"
        path.write_bytes(data)
        limits = sessions.settings.extraction
        source = SourceFile(path.parent, path.name, version_of(path.stat()))
        return (await sandbox.extract(source, kind, limits)).text
