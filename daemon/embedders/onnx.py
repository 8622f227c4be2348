"""A local ONNX model on onnxruntime (the `onnx` extra): all-MiniLM-L6-v2 without torch.

The model is a folder: `model.onnx` and the model's own `tokenizer.json`, as `python -m daemon
model fetch minilm` lays it out (`daemon.embedders.fetch`). Texts are cut at 256 tokens, as the
model card says (the model was trained on 128 and degrades past 256); vectors are the mean of
the token states over the attention mask, L2-normalised: sentence-transformers' recipe for this
model. The session is opened on the first `embed`, in the worker process that uses it, with one
thread: the pool already spreads work over the cores.

`embedding.batch_size` is 1 for onnx unless set: the int8 model quantises its activations with
one scale per call, so a text embedded in a batch gets a vector that depends on its neighbours
(cosine 0.99 against the same text alone), and search would not find the same vector twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.config import EmbeddingSettings
from daemon.embedders import Vectors, normalised
from daemon.errors import ConfigError

MAX_TOKENS = 256
FILES = ("model.onnx", "tokenizer.json")
EXTRA = "pip install 'dropzone[onnx]'"
Ids = npt.NDArray[np.int64]


def fetch_hint(folder: Path) -> str:
    return f"python -m daemon model fetch minilm --dir {folder}"


def check_folder(folder: Path) -> None:
    """A model folder with every file the model needs, or a one-line error saying how."""
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError([f"embedding.model_dir: {folder} has no {' or '.join(missing)}; "
                           f"get the model with `{fetch_hint(folder)}`"])


def mean_pool(states: npt.NDArray[np.float32], mask: Ids) -> Vectors:
    """The mean of each row's token states where its attention mask is 1, L2-normalised."""
    weights = mask[..., None].astype(np.float32)
    sums = (states * weights).sum(axis=1)
    return normalised(sums / np.maximum(weights.sum(axis=1), 1e-9))


class OnnxModel:
    """A tokenizer and an inference session: texts in, pooled vectors out."""

    def __init__(self, folder: Path, threads: int = 1) -> None:
        check_folder(folder)
        try:
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError:
            raise ConfigError([f"embedding.provider: onnx needs {EXTRA}"]) from None
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id("[PAD]") or 0)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.session: Any = onnxruntime.InferenceSession(
            str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}

    def encode(self, texts: Sequence[str]) -> dict[str, Ids]:
        """The model's inputs for these texts: token ids, padded to the longest, and masks."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids,
                "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
                "token_type_ids": np.zeros_like(ids)}
        return {name: value for name, value in feed.items() if name in self.inputs}

    def embed(self, texts: Sequence[str]) -> Vectors:
        feed = self.encode(texts)
        states = self.session.run(None, feed)[0]
        return mean_pool(np.asarray(states, dtype=np.float32), feed["attention_mask"])


class OnnxEmbedder:
    def __init__(self, settings: EmbeddingSettings) -> None:
        assert settings.model_dir is not None, "the settings fill it in for onnx"
        self.name, self.dim = settings.model, settings.dim
        self.batch_size, self.folder = settings.batch_size, settings.model_dir
        check_folder(self.folder)  # at start, in the daemon: not first in a worker
        self._model: OnnxModel | None = None

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self.model()
        vectors = np.vstack([model.embed(texts[start:start + self.batch_size])
                             for start in range(0, len(texts), self.batch_size)])
        if vectors.shape[1] != self.dim:
            raise ConfigError([f"embedding.dim: {self.dim}, but the model in {self.folder} "
                               f"makes {vectors.shape[1]}-dimensional vectors"])
        return vectors

    def model(self) -> OnnxModel:
        if self._model is None:
            self._model = OnnxModel(self.folder)
        return self._model
