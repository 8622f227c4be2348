"""Chunking: bounded chunks that cover the text, overlap, and prefer natural boundaries."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from daemon.chunking import Chunker, chunk_text


def sample_text(paragraphs: int = 40, seed: int = 7) -> str:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota"]
    paras = []
    for _ in range(paragraphs):
        sentences = [" ".join(rng.choices(words, k=rng.randint(4, 18))).capitalize() + "."
                     for _ in range(rng.randint(1, 6))]
        paras.append(" ".join(sentences))
    return "\n\n".join(paras)


@pytest.mark.parametrize(("size", "overlap"), [(100, 0), (200, 50), (1000, 100), (500, 250)])
def test_chunks_are_bounded_positioned_and_cover_everything(size: int, overlap: int) -> None:
    """No chunk exceeds the size, each sits at its offset, and every word is in some chunk."""
    text = sample_text()
    chunks = chunk_text(text, size, overlap)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert 0 < len(chunk.text) <= size
        assert text[chunk.start:chunk.start + len(chunk.text)] == chunk.text
    covered = [False] * len(text)
    for chunk in chunks:
        covered[chunk.start:chunk.start + len(chunk.text)] = [True] * len(chunk.text)
    assert all(covered[i] for i, ch in enumerate(text) if not ch.isspace())


def test_consecutive_chunks_overlap() -> None:
    """With overlap, each chunk starts before the previous one ended."""
    chunks = chunk_text(sample_text(), 300, 60)
    for before, after in pairwise(chunks):
        assert after.start < before.start + len(before.text)
        assert after.start > before.start


def test_paragraph_breaks_are_preferred() -> None:
    """Where a paragraph break falls in the second half of the window, the chunk ends there."""
    text = ("a" * 70 + " ") * 1 + "end.\n\n" + "b " * 200
    first = chunk_text(text, 100, 0)[0]
    assert first.text.endswith("end.")


def test_streaming_gives_the_same_chunks_as_whole_text() -> None:
    """Feeding the text in arbitrary pieces changes nothing."""
    text = sample_text(60, seed=3)
    whole = chunk_text(text, 400, 80)
    chunker, streamed = Chunker(400, 80), []
    rng, pos = random.Random(1), 0
    while pos < len(text):
        step = rng.randint(1, 700)
        streamed += chunker.feed(text[pos:pos + step])
        pos += step
    streamed += chunker.finish()
    assert streamed == whole


def test_small_empty_and_unbroken_text() -> None:
    """Short text is one chunk; blank text none; text without spaces is cut hard."""
    assert [c.text for c in chunk_text("  hello  ", 100, 10)] == ["hello"]
    assert chunk_text(" \n\n \t", 100, 10) == []
    hard = chunk_text("x" * 250, 100, 0)
    assert [len(c.text) for c in hard] == [100, 100, 50]


def test_overlap_larger_than_half_is_refused() -> None:
    """An overlap above half the size could stall; it is refused."""
    with pytest.raises(ValueError, match="overlap"):
        Chunker(100, 60)
