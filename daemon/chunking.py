"""Chunking: a stream of text blocks in, overlapping chunks of bounded size out.

Cuts prefer paragraph breaks, then line breaks, then sentence ends, then spaces, so chunks read
as text. The chunker keeps only about one chunk of text in memory, whatever the document's size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WHITESPACE = re.compile(r"\s")
_TIERS = (("\n\n",), ("\n",), (". ", "? ", "! ", ".\t", "。"), (" ", "\t"))


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int  # offset of the chunk's first character in the whole text
    text: str


class Chunker:
    """Feed text blocks, get complete chunks; `finish()` returns the rest."""

    def __init__(self, size: int = 1000, overlap: int = 100) -> None:
        if not 0 <= overlap * 2 <= size:
            raise ValueError("overlap must be between 0 and half the chunk size")
        self.size, self.overlap = size, overlap
        self._buf = ""
        self._pos = 0  # where the next chunk starts in _buf
        self._offset = 0  # offset of _buf[0] in the whole text
        self._index = 0

    def feed(self, text: str) -> list[Chunk]:
        self._buf = self._buf[self._pos:] + text
        self._offset += self._pos
        self._pos = 0
        out: list[Chunk] = []
        while len(self._buf) - self._pos > self.size:
            out.extend(self._cut())
        return out

    def finish(self) -> list[Chunk]:
        out = self.feed("")
        out.extend(self._emit(self._pos, len(self._buf)))
        self._pos = len(self._buf)
        return out

    def _cut(self) -> list[Chunk]:
        start = self._pos
        end = self._boundary(start)
        self._pos = self._next_start(start, end)
        return self._emit(start, end)

    def _boundary(self, start: int) -> int:
        """The best place to end a chunk that starts at `start`."""
        lo, hi = start + max(self.size // 2, self.overlap + 1), start + self.size
        for tier in _TIERS:
            found = [(self._buf.rfind(sep, lo, hi), sep) for sep in tier]
            ends = [at + len(sep) for at, sep in found if at >= 0]
            if ends:
                return max(ends)
        return hi

    def _next_start(self, start: int, end: int) -> int:
        """Back up by `overlap` characters, then forward to the start of a word."""
        if not self.overlap:
            return end
        begin = end - self.overlap
        space = _WHITESPACE.search(self._buf, begin, end)
        return max(space.end() if space else begin, start + 1)

    def _emit(self, start: int, end: int) -> list[Chunk]:
        text = self._buf[start:end]
        stripped = text.strip()
        if not stripped:
            return []
        lead = len(text) - len(text.lstrip())
        chunk = Chunk(self._index, self._offset + start + lead, stripped)
        self._index += 1
        return [chunk]


def chunk_text(text: str, size: int = 1000, overlap: int = 100) -> list[Chunk]:
    """All chunks of a whole text at once."""
    chunker = Chunker(size, overlap)
    return chunker.feed(text) + chunker.finish()
