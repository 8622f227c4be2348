"""Hashed features: the dependency-free default embedder.

Words are hashed with CRC-32 (stable across processes and machines, memoised per word); word
bigrams get a hash mixed from their two words' hashes in numpy, so the Python work per chunk is
one regex and one dictionary lookup per word. All features of a batch land in their signed
buckets with a single `bincount`; counts are damped with log1p and rows L2-normalised. No model
download, deterministic, about as good as TF-IDF for keyword-similar text.
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
_SIGN_BIT = np.uint32(0x80000000)
Hashes = npt.NDArray[np.uint32]


def _mix(left: Hashes, right: Hashes) -> Hashes:
    """A well-spread 32-bit hash of a pair of hashes (bigrams), vectorised."""
    x = (left * np.uint32(0x9E3779B1)) ^ right
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x45D9F3B)
    return x ^ (x >> np.uint32(16))


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

    def embed(self, texts: Sequence[str]) -> Vectors:
        features = [self.features(t) for t in texts]
        rows = np.repeat(np.arange(len(texts)), [len(f) for f in features])
        hashes = np.concatenate(features) if features else np.zeros(0, np.uint32)
        signs = np.where(hashes & _SIGN_BIT, 1.0, -1.0)
        slots = rows * self.dim + (hashes % np.uint32(self.dim)).astype(np.int64)
        counts = np.bincount(slots, weights=signs, minlength=len(texts) * self.dim)
        damped = (np.sign(counts) * np.log1p(np.abs(counts))).reshape(len(texts), self.dim)
        return normalised(damped)
