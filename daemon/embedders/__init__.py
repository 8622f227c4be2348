"""Embedders: text in, unit-length vectors out, behind one small interface.

`embed` is CPU work; callers run it off the event loop. Every embedder has a `name` that goes
into each embedding row, so vectors of two models are never mixed in one search.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from daemon.config import EmbeddingSettings

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One row per text, shape (len(texts), dim), float32, L2-normalised."""
        ...


def create(settings: EmbeddingSettings) -> Embedder:
    """The embedder the config names (a model is loaded only when first used)."""
    if settings.provider == "http":
        from daemon.embedders.http import HttpEmbedder

        return HttpEmbedder(settings)
    if settings.provider == "sentence":
        from daemon.embedders.sentence import SentenceEmbedder

        return SentenceEmbedder(settings)
    if settings.provider == "onnx":
        from daemon.embedders.onnx import OnnxEmbedder

        return OnnxEmbedder(settings)
    from daemon.embedders.hashing import HashingEmbedder

    return HashingEmbedder(settings.dim)


def normalised(vectors: Vectors) -> Vectors:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms == 0, 1.0, norms)).astype(np.float32)
