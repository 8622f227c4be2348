"""The http embedder against an OpenAI-compatible server: batches, order, retries, errors."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.config import EmbeddingSettings
from daemon.embedders import create
from daemon.embedders.hashing import HashingEmbedder
from daemon.errors import Misconfigured, PermanentError, TransientError
from tests.embedserver import Script, embedding_server
from tests.helpers import free_port

TEXTS = [f"text number {i} about topic {i % 3}" for i in range(10)]


def settings(url: str, **extra: object) -> EmbeddingSettings:
    return EmbeddingSettings(provider="http", model="test-model", url=url, batch_size=4,
                             timeout_s=5, **extra)


def test_batches_come_back_in_order_and_unit_length() -> None:
    """10 texts in batches of 4: three requests, vectors in input order, normalised."""
    script = Script()
    with embedding_server(script) as url:
        vectors = create(settings(url)).embed(TEXTS)
    assert [len(r["input"]) for r in script.requests] == [4, 4, 2]
    assert {r["model"] for r in script.requests} == {"test-model"}
    assert np.allclose(vectors, HashingEmbedder(384).embed(TEXTS), atol=1e-6)


def test_the_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key named by api_key_env is sent as a bearer token; a refused key is a misconfig."""
    script = Script(key="s3cret-token")
    with embedding_server(script) as url:
        with pytest.raises(Misconfigured, match="HTTP 401"):
            create(settings(url)).embed(TEXTS[:1])
        monkeypatch.setenv("DROPZONE_EMBEDDING_API_KEY", "s3cret-token")
        assert create(settings(url)).embed(TEXTS[:1]).shape == (1, 384)


def test_busy_answers_are_retried_then_left_to_the_pipeline() -> None:
    """Two 429s are waited out; a server that stays at 503 is a transient error."""
    with embedding_server(Script(failures=[429, 429])) as url:
        assert create(settings(url)).embed(TEXTS[:2]).shape == (2, 384)
    with embedding_server(Script(failures=[503] * 5)) as url, \
            pytest.raises(TransientError, match="HTTP 503"):
        create(settings(url)).embed(TEXTS[:2])


def test_bad_input_and_a_wrong_dimension_are_not_retried() -> None:
    """A 400 is the input's fault; vectors of another size are a misconfiguration."""
    script = Script(failures=[400])
    with embedding_server(script) as url, pytest.raises(PermanentError, match="HTTP 400"):
        create(settings(url)).embed(TEXTS[:1])
    assert len(script.requests) == 1
    with embedding_server(Script(dim=128)) as url, pytest.raises(Misconfigured, match="128"):
        create(settings(url)).embed(TEXTS[:1])


def test_an_unreachable_endpoint_is_transient() -> None:
    """Nothing listening: a transient error, after a few quick attempts."""
    with pytest.raises(TransientError, match="embeddings at"):
        create(settings(f"http://127.0.0.1:{free_port()}/v1")).embed(TEXTS[:1])
