"""Extract: the text and metadata of a file (`daemon.formats` knows each kind).

PDF and DOCX files are read in a sandboxed process with time and memory limits
(`daemon.sandbox`): their parsers face hostile input. Small text files (HTML, Markdown, CSV,
JSON, plain text in any common encoding) are decoded here, together, off the event loop;
large ones become a lazy stream of blocks in the codec their first block shows, so nothing
holds them whole. Other files are still uploaded and recorded, with no chunks and
`metadata.extraction = "unsupported"`; text files with NUL bytes are recorded as `"binary"`.
"""

from __future__ import annotations

import asyncio
import codecs
import os
from collections.abc import AsyncIterator
from functools import partial

from daemon import formats, sandbox
from daemon.files import blocks, check_version
from daemon.formats import BinaryContent, Markup
from daemon.stages import Env, Job, each, timed

HEAD_BYTES = 8192
SANDBOXED = frozenset({"pdf", "docx"})
TEXT_KINDS = frozenset({"html", "markdown", "csv", "json", "text"})


async def run(jobs: list[Job], env: Env) -> None:
    """Every job gets its kind, then its text (or a stream of it) and metadata."""
    for job in jobs:
        job.metadata["extraction"] = formats.kind_of(job.row.rel_path,
                                                     (job.body or b"")[:HEAD_BYTES])
    small = [job for job in jobs if _kind(job) in TEXT_KINDS and job.body is not None]
    with timed(small, "extract"):
        await asyncio.to_thread(_extract_all, small, env.settings.extraction.max_chars)
    await each([job for job in jobs if _kind(job) in SANDBOXED], partial(_sandboxed, env=env))
    for job in jobs:
        if _kind(job) in TEXT_KINDS and job.body is None:
            job.text_stream = partial(read_text, job, _kind(job))


def _kind(job: Job) -> str:
    return str(job.metadata["extraction"])


async def _sandboxed(job: Job, env: Env) -> None:
    with timed([job], "extract"):
        result = await sandbox.extract(job.file, _kind(job),
                                       env.settings.extraction)
    job.metadata.update(result.metadata)
    job.text = result.text


def _extract_all(jobs: list[Job], max_chars: int) -> None:
    for job in jobs:
        try:
            result = formats.extract_bytes(job.body or b"", job.row.rel_path, _kind(job),
                                           max_chars)
        except BinaryContent:
            job.metadata["extraction"] = "binary"
        except Exception as exc:
            job.error = exc
        else:
            job.metadata.update(result.metadata)
            job.text = result.text


async def read_text(job: Job, kind: str) -> AsyncIterator[str]:
    """Decoded text of a large file in blocks of about 1 MiB, in the codec its first block
    shows (`formats.sniff_codec`); binary files yield nothing. Read from the descriptor that
    was hashed and uploaded, which must still be that version at the end."""
    markup = Markup() if kind == "html" else None
    decoder: codecs.IncrementalDecoder | None = None
    job.metadata["chars"] = 0
    handle = await asyncio.to_thread(job.opened)
    reader = blocks(handle, job.row.size_bytes)
    while True:
        with timed([job], "extract"):
            block = await asyncio.to_thread(next, reader, b"")
            decoder = decoder or _decoder_for(job, block)
            if decoder is None:
                return
            text = _decode(decoder, markup, block)
        job.metadata["chars"] += len(text)
        if text:
            yield text
        if not block:
            check_version(os.fstat(handle.fileno()), job.version)
            return


def _decoder_for(job: Job, head: bytes) -> codecs.IncrementalDecoder | None:
    try:
        codec = formats.sniff_codec(head)
    except BinaryContent:
        job.metadata["extraction"] = "binary"
        return None
    job.metadata["encoding"] = codec
    return codecs.getincrementaldecoder(codec)(errors="replace")


def _decode(decoder: codecs.IncrementalDecoder, markup: Markup | None, block: bytes) -> str:
    text = decoder.decode(block, final=not block)
    text = markup.push(text, final=not block) if markup else text
    return text.replace("\x00", "")
