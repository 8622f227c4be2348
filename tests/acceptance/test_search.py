"""`python -m daemon search` as a user runs it: modes, excerpts, JSON fields, usage errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Daemon, write_config

pytestmark = pytest.mark.db

FILES = {
    "orchard.md": "# Orchard\n\nThe pruning schedule for apple trees in the orchard.\n",
    "bread.md": "# Bread\n\nSourdough starter hydration and a long, cold proof.\n",
    "rocks.txt": "Basalt columns form when lava cools slowly and cracks.\n",
}
OLD_FIELDS = {"score", "zone", "doc_type", "source_path", "object_url", "chunk_index", "chunk",
              "metadata"}


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Path:
    path = write_config(tmp_path, database=database_url)
    for name, text in FILES.items():
        (tmp_path / "zones" / "docs" / name).write_text(text)
    daemon = Daemon(path, "--once")
    assert daemon.run() == 0, daemon.problems()
    return path


def search(path: Path, *args: str) -> tuple[int, str, list[dict[str, Any]]]:
    daemon = Daemon(path, "search", *args)
    code = daemon.run(120)
    return code, daemon.output(), [e for e in daemon.events if "score" in e]


def test_json_keeps_its_fields_and_adds_mode_scores_and_excerpt(config: Path) -> None:
    """Every mode finds the document by its words; --json has the old fields and the new."""
    for mode in ("hybrid", "vector", "text"):
        code, output, hits = search(config, "pruning schedule", "--json", "--mode", mode)
        assert code == 0, output
        assert hits[0]["source_path"] == "orchard.md", (mode, hits)
        assert OLD_FIELDS | {"mode", "similarity", "text_rank", "excerpt"} == set(hits[0])
        assert hits[0]["mode"] == mode and "**pruning** **schedule**" in hits[0]["excerpt"]
        assert hits[0]["object_url"].startswith("file://")


def test_text_mode_shows_only_documents_with_the_words(config: Path) -> None:
    code, output, hits = search(config, "sourdough", "--json", "--mode", "text")
    assert code == 0, output
    assert [h["source_path"] for h in hits] == ["bread.md"]
    assert hits[0]["similarity"] is None and hits[0]["text_rank"] > 0


def test_the_default_is_hybrid_and_plain_output_shows_where_and_the_excerpt(
        config: Path) -> None:
    """Rank, score, title; zone/path and object URL; the excerpt with the words marked."""
    code, output, _ = search(config, "basalt lava", "--limit", "1")
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0].startswith(" 1. ") and lines[0].endswith("rocks.txt")
    assert lines[1].split()[0] == "docs/rocks.txt" and lines[1].split()[1].startswith("file://")
    assert lines[2].strip().startswith("**Basalt** columns form when **lava** cools slowly")
    _, _, hits = search(config, "basalt lava", "--json")
    assert hits[0]["mode"] == "hybrid"


@pytest.mark.parametrize("query", ["", "the of"])
def test_an_empty_or_stopword_query_is_a_one_line_usage_error(config: Path, query: str) -> None:
    """Exit code 2 and one line that says why; no rows (once: rows with a NaN score)."""
    code, output, hits = search(config, query, "--json")
    assert code == 2 and hits == []
    assert output.count("\n") == 1 and ("nothing to search for" in output or "empty" in output)
    assert "Traceback" not in output and "NaN" not in output


def test_no_vector_hit_at_or_below_zero_similarity(config: Path) -> None:
    """Words no document shares embed at similarity 0 to every chunk (hashing embedder):
    vector mode shows nothing (once: every document, score 0.0), and says so."""
    code, output, hits = search(config, "zeppelin quartz", "--json", "--mode", "vector")
    assert code == 0 and hits == [], output
    code, output, _ = search(config, "zeppelin quartz", "--mode", "vector")
    assert code == 0 and "no documents match" in output
