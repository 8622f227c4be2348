"""`reembed`: stored documents get the chunks of another model (the work is in
`daemon.reembed`; this is the command around it)."""

from __future__ import annotations

import asyncio
import sys

from pydantic import ValidationError

from daemon.commands import fail
from daemon.config import EmbeddingSettings, Settings
from daemon.errors import EXIT_OK, EXIT_QUARANTINED, ConfigError, DaemonError
from daemon.reembed import reembed


def run(settings: Settings, provider: str | None, model: str | None, zone: str | None,
        replace: bool) -> int:
    try:
        settings = with_model(settings, provider, model)
        done, failed = asyncio.run(reembed(settings, zone, replace))
    except DaemonError as exc:
        return fail(exc, settings, "reembed")
    print(f"re-embedded {done} documents with {settings.embedding.model}"
          + (f"; {failed} could not be read (see the log)" if failed else ""), file=sys.stderr)
    return EXIT_QUARANTINED if failed else EXIT_OK


def with_model(settings: Settings, provider: str | None, model: str | None) -> Settings:
    """The settings with another embedding model, validated as the config file would be."""
    embedding = settings.embedding.model_dump()
    if provider and provider != embedding["provider"]:  # the old provider's model and sizes
        for key in ("model", "batch_size", "model_dir"):
            del embedding[key]
    embedding.update({k: v for k, v in (("provider", provider), ("model", model)) if v})
    try:
        return settings.model_copy(update={"embedding": EmbeddingSettings(**embedding)})
    except ValidationError as exc:
        raise ConfigError([f"embedding: {e['msg']}" for e in exc.errors()]) from None
