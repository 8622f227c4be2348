"""The hashed-features embedder: deterministic, normalised, and it separates topics."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from daemon.embedders.hashing import HashingEmbedder


def test_shape_norm_and_name() -> None:
    """Vectors have the configured dim, unit length, float32, and the name records the dim."""
    embedder = HashingEmbedder(64)
    vectors = embedder.embed(["one two three", "four five"])
    assert vectors.shape == (2, 64)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.name == "hashing-v1-64"
    assert embedder.embed([]).shape == (0, 64)


def test_deterministic_across_processes() -> None:
    """The same text gives the same vector in another interpreter (no randomised hashing)."""
    here = HashingEmbedder(32).embed(["stable hashing across processes"])[0]
    code = ("from daemon.embedders.hashing import HashingEmbedder;"
            "print(list(HashingEmbedder(32).embed(['stable hashing across processes'])[0]))")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": "123"}).stdout
    assert np.allclose(here, np.array(eval(there), dtype=np.float32))


def test_similar_texts_are_closer_than_unrelated_ones() -> None:
    """Cosine similarity ranks a paraphrase above an unrelated text."""
    embedder = HashingEmbedder(384)
    a, b, c = embedder.embed([
        "the invoice for march is attached, please pay the invoice by friday",
        "please pay the attached march invoice before friday",
        "the cat slept on the warm windowsill all afternoon",
    ])
    assert float(a @ b) > float(a @ c) + 0.2


def test_empty_text_is_a_zero_vector() -> None:
    """No words, no features: a zero vector rather than NaNs."""
    vector = HashingEmbedder(16).embed(["  ...  "])[0]
    assert not np.isnan(vector).any()
    assert float(np.abs(vector).sum()) == 0.0
