"""The local semantic model (the [semantic] extra): all-MiniLM-L6-v2, offline, on CPU.

Marked `semantic`: the default run leaves it out (the extra is ~1.5 GB with CPU torch); CI
installs the extra and runs `pytest -m semantic`.
"""

from __future__ import annotations

import numpy as np
import pytest

from daemon.config import EmbeddingSettings
from daemon.embedders import create
from daemon.errors import ConfigError

pytestmark = pytest.mark.semantic

MINILM = EmbeddingSettings(provider="sentence", model="all-MiniLM-L6-v2", dim=384)


def test_minilm_finds_meaning_not_words(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline (no hub access at all), paraphrases land nearer than unrelated text."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embedder = create(MINILM)
    vectors = embedder.embed(["The cat sat on the mat.", "A kitten rested on the rug.",
                              "Quarterly revenue rose by four percent."])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    near, far = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert near > far + 0.3, (near, far)
    assert embedder.name == "all-MiniLM-L6-v2"


def test_a_wrong_dimension_is_a_config_error() -> None:
    """embedding.dim must match the model's vectors (pgvector columns have a fixed size)."""
    wrong = EmbeddingSettings(provider="sentence", model="all-MiniLM-L6-v2", dim=768)
    with pytest.raises(ConfigError, match="384-dimensional"):
        create(wrong).embed(["x"])
