"""Hashed features: the dependency-free default embedder.

Words are hashed with CRC-32 (stable across processes and machines); word bigrams get a hash
mixed from their two words' hashes. ASCII texts (nearly all) are tokenised and hashed for a whole
batch at once in numpy (one vectorised CRC-32 step per character position), the same hashes as
`zlib.crc32`; other texts take one regex and one memoised lookup per word. All features of a
batch land in their signed buckets with a single `bincount`; counts are damped with log1p and
rows L2-normalised. No model download, deterministic, about as good as TF-IDF for
keyword-similar text.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from daemon.embedders import Vectors, normalised

_TOKEN = re.compile(r"\w+")
_CACHE_LIMIT = 1_000_000
_LONG_WORD = 24  # longer ASCII words are hashed one by one: numpy takes a step per character
Hashes = npt.NDArray[np.uint32]
Indices = npt.NDArray[np.int64]


def _crc_table() -> Hashes:
    """The table of the CRC-32 zlib computes (reflected, polynomial 0xEDB88320)."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0xEDB88320), table >> 1)
    return table.astype(np.uint32)


_CRC = _crc_table()
_LOWER = np.arange(256, dtype=np.uint8)
_LOWER[ord("A"):ord("Z") + 1] += 32
_IS_WORD = np.isin(np.arange(256), np.frombuffer(  # what `\w` matches in ASCII text
    b"0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8))


def _mix(left: Hashes, right: Hashes) -> Hashes:
    """A well-spread 32-bit hash of a pair of hashes (bigrams), vectorised."""
    x = (left * np.uint32(0x9E3779B1)) ^ right
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x45D9F3B)
    return x ^ (x >> np.uint32(16))


def _word_spans(codes: npt.NDArray[np.uint8]) -> tuple[Indices, Indices]:
    """Starts and ends of the runs of word characters (`\\w+`) in ASCII codes."""
    edges = np.diff(_IS_WORD[codes].astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _crc32_short(codes: npt.NDArray[np.uint8], starts: Indices, lengths: Indices) -> Hashes:
    """zlib.crc32 of each span, for all spans at once: one step per character position, over
    the spans that long (longest first, so they are a prefix)."""
    order = np.argsort(-lengths.astype(np.int8), kind="stable")  # a radix sort: lengths are small
    starts, lengths = starts[order], lengths[order]
    longest = int(lengths[0]) if len(lengths) else 0
    active = np.searchsorted(-lengths, -np.arange(longest), side="left")
    crc = np.full(len(order), 0xFFFFFFFF, dtype=np.uint32)
    for step, count in enumerate(active):
        head = crc[:count]
        byte = codes[starts[:count] + step]
        crc[:count] = _CRC[(head ^ byte) & np.uint32(0xFF)] ^ (head >> np.uint32(8))
    out = np.empty_like(crc)
    out[order] = crc ^ np.uint32(0xFFFFFFFF)
    return out


def _crc32_words(codes: npt.NDArray[np.uint8], starts: Indices, ends: Indices) -> Hashes:
    """zlib.crc32 of each word: short ones vectorised, the rare long ones one by one."""
    lengths = ends - starts
    short = lengths <= _LONG_WORD
    out = np.empty(len(starts), dtype=np.uint32)
    out[short] = _crc32_short(codes, starts[short], lengths[short])
    text = codes.tobytes()
    out[~short] = [zlib.crc32(text[a:b]) for a, b in zip(starts[~short], ends[~short], strict=True)]
    return out


def _ascii_features(texts: Sequence[str]) -> tuple[Hashes, Indices]:
    """What `features` gives for each of these ASCII texts, all together: the hashes, and for
    each the index of its text."""
    codes = _LOWER[np.frombuffer("\n".join(texts).encode("ascii"), np.uint8)]
    starts, ends = _word_spans(codes)
    unigrams = _crc32_words(codes, starts, ends)
    firsts = np.cumsum([0] + [len(text) + 1 for text in texts[:-1]])
    rows = np.searchsorted(firsts, starts, side="right") - 1
    same = rows[1:] == rows[:-1]  # consecutive words of one text make a bigram
    bigrams = _mix(unigrams[:-1][same], unigrams[1:][same])
    return np.concatenate([unigrams, bigrams]), np.concatenate([rows, rows[1:][same]])


def _signed_counts(hashes: Hashes, rows: Indices, size: int, dim: int) -> Indices:
    """Per slot (row * dim + hash % dim): features whose sign bit is set, less those whose
    is not; integers counted without float weights, two bins a slot."""
    slots = rows * dim + (hashes % np.uint32(dim)).astype(np.int64)
    bins = np.bincount(slots * 2 + (hashes >> np.uint32(31)), minlength=2 * size)
    return bins[1::2] - bins[0::2]


class HashingEmbedder:
    """The hashing trick over word unigrams and bigrams."""

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim
        self.name = f"hashing-v1-{dim}"
        self._words: dict[str, int] = {}

    def _word_hash(self, word: str) -> int:
        found = self._words.get(word)
        if found is None:
            found = zlib.crc32(word.encode("utf-8", "surrogatepass"))
            if len(self._words) >= _CACHE_LIMIT:
                self._words.clear()
            self._words[word] = found
        return found

    def features(self, text: str) -> Hashes:
        """Hashes of the text's words followed by those of its word bigrams."""
        words = _TOKEN.findall(text.lower())
        unigrams = np.fromiter(map(self._word_hash, words), dtype=np.uint32, count=len(words))
        return np.concatenate([unigrams, _mix(unigrams[:-1], unigrams[1:])])

    def _all_features(self, texts: Sequence[str]) -> tuple[Hashes, Indices]:
        """Every text's features, and for each the index of its text (order does not matter:
        they are counted)."""
        plain = [i for i, text in enumerate(texts) if text.isascii()]
        hashes, rows = _ascii_features([texts[i] for i in plain]) if plain else (
            np.zeros(0, np.uint32), np.zeros(0, np.int64))
        parts, owners = [hashes], [np.asarray(plain, dtype=np.int64)[rows]]
        for i in sorted(set(range(len(texts))) - set(plain)):
            parts.append(self.features(texts[i]))
            owners.append(np.full(len(parts[-1]), i, dtype=np.int64))
        return np.concatenate(parts), np.concatenate(owners)

    def embed(self, texts: Sequence[str]) -> Vectors:
        hashes, rows = self._all_features(texts)
        counts = _signed_counts(hashes, rows, len(texts) * self.dim, self.dim)
        damped = (np.sign(counts) * np.log1p(np.abs(counts))).reshape(len(texts), self.dim)
        return normalised(damped)
