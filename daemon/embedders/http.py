"""An OpenAI-compatible `/v1/embeddings` endpoint (vLLM, TEI, Ollama, a hosted API).

For machines with a GPU elsewhere: chunks go in batches of `embedding.batch_size`, each request
with a timeout; blips (connection errors, 429 with its Retry-After, 5xx) are retried a few times
here, then left to the pipeline's retry with backoff as a transient error. A refused key or an
unknown model is a misconfiguration (files wait; nothing is quarantined for it). The key comes
from the environment variable `embedding.api_key_env`, never from the config file.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import numpy as np

from daemon.config import EmbeddingSettings
from daemon.embedders import Vectors, normalised
from daemon.errors import Misconfigured, PermanentError, TransientError
from daemon.logs import add_secret

ATTEMPTS = 3
REFUSED = (401, 403, 404)


class Busy(TransientError):
    """The endpoint asked us to come back later (429 or 5xx), maybe saying when."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class HttpEmbedder:
    """Vectors from a remote model, L2-normalised here whatever the server does."""

    def __init__(self, settings: EmbeddingSettings) -> None:
        self.name, self.dim = settings.model, settings.dim
        self.url = f"{(settings.url or '').rstrip('/')}/embeddings"
        self.batch_size, self.timeout_s = settings.batch_size, settings.timeout_s
        self._key = os.environ.get(settings.api_key_env)
        if self._key:
            add_secret(self._key)  # redacted from every log line, should an error echo it

    def embed(self, texts: Sequence[str]) -> Vectors:
        rows: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            rows.extend(self._batch(list(texts[start:start + self.batch_size])))
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
        if len(texts) and vectors.shape[1] != self.dim:
            raise Misconfigured(f"embedding.dim is {self.dim}, but {self.name} at {self.url} "
                                f"returns {vectors.shape[1]} dimensions")
        return normalised(vectors)

    def _batch(self, texts: list[str]) -> list[list[float]]:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return _vectors(self._post(texts), len(texts))
            except TransientError as exc:
                if attempt == ATTEMPTS:
                    raise
                wait_s = exc.retry_after_s if isinstance(exc, Busy) else None
                time.sleep(0.5 * 2**attempt if wait_s is None else wait_s)
        raise AssertionError("unreachable")

    def _post(self, texts: list[str]) -> Any:
        body = json.dumps({"model": self.name, "input": texts}).encode()
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(self.url, body, headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            raise _http_error(exc, self.url) from None
        except (OSError, ValueError) as exc:  # refused, reset, timed out, not JSON
            raise TransientError(f"embeddings at {self.url}: {type(exc).__name__}: {exc}") \
                from None


def _http_error(exc: urllib.error.HTTPError, url: str) -> Exception:
    """A status code as one of ours: refused -> misconfigured, busy -> transient."""
    detail = exc.read(300).decode("utf-8", "replace").strip()
    message = f"embeddings at {url}: HTTP {exc.code} {detail}".strip()
    if exc.code in REFUSED:
        return Misconfigured(message)
    if exc.code == 429 or exc.code >= 500:
        return Busy(message, _retry_after(exc.headers.get("Retry-After")))
    return PermanentError(message)


def _retry_after(value: str | None) -> float | None:
    try:
        return min(30.0, float(value)) if value else None
    except ValueError:
        return None


def _vectors(payload: Any, count: int) -> list[list[float]]:
    """The vectors of an OpenAI-style answer, in input order."""
    try:
        data = sorted(payload["data"], key=lambda item: item.get("index", 0))
        rows = [list(map(float, item["embedding"])) for item in data]
    except (KeyError, TypeError, ValueError) as exc:
        raise TransientError(f"embeddings: unexpected answer ({type(exc).__name__})") from None
    if len(rows) != count:
        raise TransientError(f"embeddings: {len(rows)} vectors for {count} inputs")
    return rows
