"""Extract: the text of a file, as a lazy stream of blocks (nothing is read until it is used).

UTF-8 text formats now (txt, md, csv, json, html, xml, log, ...); markup loses its tags. Other
files are still uploaded and recorded, with no chunks and `metadata.extraction = "unsupported"`.
A file with NUL bytes in its first block is binary whatever its name says.
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import AsyncIterator
from functools import partial
from html.parser import HTMLParser

from daemon.files import open_version
from daemon.objectstore import extension
from daemon.stages import Env, Job, timed

BLOCK_BYTES = 1 << 20
KINDS = {
    **dict.fromkeys(("txt", "text", "md", "markdown", "rst", "csv", "tsv", "json", "jsonl",
                     "ndjson", "log", "yaml", "yml"), "text"),
    **dict.fromkeys(("html", "htm", "xhtml", "xml"), "markup"),
}
_BREAKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6",
                     "section", "article", "blockquote", "pre", "title"})


class TagText(HTMLParser):
    """Incremental markup-to-text: keeps text, drops tags, scripts and styles."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        if tag in _BREAKS:
            self._parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        if tag in _BREAKS:
            self._parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._parts.append(data)

    def push(self, text: str, final: bool = False) -> str:
        self.feed(text)
        if final:
            self.close()
        out, self._parts = "".join(self._parts), []
        return out


async def run(jobs: list[Job], env: Env) -> None:
    """Small files are decoded now, together, off the event loop; large ones get a stream."""
    for job in jobs:
        job.metadata["extraction"] = KINDS.get(extension(job.row.rel_path), "unsupported")
    readable = [job for job in jobs if job.metadata["extraction"] != "unsupported"]
    small = [job for job in readable if job.body is not None]
    with timed(small, "extract"):
        await asyncio.to_thread(_extract_all, small)
    for job in readable:
        if job.body is None:
            job.text_stream = partial(read_text, job, job.metadata["extraction"])


def _extract_all(jobs: list[Job]) -> None:
    for job in jobs:
        try:
            job.text = extract_body(job)
        except Exception as exc:
            job.error = exc


def extract_body(job: Job) -> str | None:
    """The text of a small file held in memory (None for binary)."""
    body = job.body or b""
    if b"\x00" in body[:BLOCK_BYTES]:
        job.metadata["extraction"] = "binary"
        return None
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
    parser = TagText() if job.metadata["extraction"] == "markup" else None
    text = _decode(job, decoder, parser, body) + _decode(job, decoder, parser, b"")
    job.metadata["chars"] = len(text)
    return text


def _decode(job: Job, decoder: codecs.IncrementalDecoder, parser: TagText | None,
            block: bytes) -> str:
    text = decoder.decode(block, final=not block)
    if "\ufffd" in text:
        job.metadata["decode_errors"] = True
    text = parser.push(text, final=not block) if parser else text
    return text.replace("\x00", "")


async def read_text(job: Job, kind: str) -> AsyncIterator[str]:
    """Decoded text of a large file in blocks of about 1 MiB; binary files yield nothing."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
    parser = TagText() if kind == "markup" else None
    job.metadata["chars"] = 0
    with open_version(job.source, job.version) as handle:
        first = True
        while True:
            with timed([job], "extract"):
                block = await asyncio.to_thread(handle.read, BLOCK_BYTES)
                if first and b"\x00" in block:
                    job.metadata["extraction"] = "binary"
                    return
                first, text = False, _decode(job, decoder, parser, block)
            job.metadata["chars"] += len(text)
            if text:
                yield text
            if not block:
                return
