"""Hashed features: the dependency-free default embedder.

Word unigrams and bigrams are hashed (CRC-32, stable across processes and machines) into `dim`
signed buckets, counts are damped with log1p and the vector is L2-normalised. No model download,
deterministic, about as good as TF-IDF for finding near-duplicate and keyword-similar text.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from daemon.embedders import Vectors

_TOKEN = re.compile(r"\w+")
_CACHE_LIMIT = 1_000_000


class HashingEmbedder:
    """The hashing trick over word 1- and 2-grams."""

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim
        self.name = f"hashing-v1-{dim}"
        self._buckets: dict[str, int] = {}

    def _bucket(self, feature: str) -> int:
        """Signed bucket + 1 (so that bucket 0 keeps its sign); memoised per feature."""
        found = self._buckets.get(feature)
        if found is None:
            h = zlib.crc32(feature.encode("utf-8", "surrogatepass"))
            found = (h % self.dim + 1) * (1 if h & 0x80000000 else -1)
            if len(self._buckets) >= _CACHE_LIMIT:
                self._buckets.clear()
            self._buckets[feature] = found
        return found

    def vector(self, text: str) -> np.ndarray:
        words = _TOKEN.findall(text.lower())
        features = words + [f"{a} {b}" for a, b in pairwise(words)]
        signed = np.fromiter(map(self._bucket, features), dtype=np.int64, count=len(features))
        counts = np.bincount(np.abs(signed) - 1, weights=np.sign(signed), minlength=self.dim)
        damped = (np.sign(counts) * np.log1p(np.abs(counts))).astype(np.float32)
        norm = float(np.linalg.norm(damped))
        return damped / norm if norm else damped

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.vstack([self.vector(t) for t in texts]).astype(np.float32)
