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


def _reference(texts: list[str], dim: int) -> np.ndarray:
    """The embedding spelled out word by word (regex, zlib.crc32): what the batched numpy path
    must reproduce bit for bit, or stored vectors would stop matching new ones."""
    import re
    import zlib

    from daemon.embedders import normalised
    from daemon.embedders.hashing import _mix

    counts = np.zeros((len(texts), dim))
    for row, text in enumerate(texts):
        words = re.findall(r"\w+", text.lower())
        unigrams = np.array([zlib.crc32(w.encode("utf-8", "surrogatepass")) for w in words],
                            dtype=np.uint32)
        for feature in np.concatenate([unigrams, _mix(unigrams[:-1], unigrams[1:])]):
            counts[row, int(feature) % dim] += 1.0 if int(feature) & 0x80000000 else -1.0
    return normalised(np.sign(counts) * np.log1p(np.abs(counts)))


def test_batched_hashing_matches_word_by_word() -> None:
    """ASCII texts (hashed together in numpy), long words (one by one) and non-ASCII texts
    (the regex path) give exactly the vectors of the plain word-by-word definition."""
    texts = ["The QUICK brown_fox, jumps!\nover 42 lazy-dogs.", "", "...", "a",
             "x" * 25 + " " + "Y" * 24 + " " + "z" * 300 + " tail",
             "naïve café ÜBER straße and more", "lone \ud800 surrogate", "same same same same",
             "tab\tseparated\r\nlines_with_underscores __init__ 3.14"]
    for dim in (16, 384):
        assert np.array_equal(HashingEmbedder(dim).embed(texts), _reference(texts, dim))
