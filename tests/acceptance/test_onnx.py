"""The onnx provider end to end: `--once` embeds with all-MiniLM-L6-v2-q8 in its worker
processes, and `search` finds a document by what it means, not by the words it uses."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from daemon.config import ONNX_MODEL
from tests.helpers import Daemon, Sinks, write_config

pytestmark = pytest.mark.db

DOCUMENTS = {
    "mortgage.txt": "The bank approved the mortgage after reviewing the loan application, "
                    "the interest rate and the deposit.",
    "kitten.txt": "Our kitten chases a ball of yarn and purrs when stroked.",
    "volcano.txt": "Lava and ash poured from the crater during the eruption of the volcano.",
    "train.txt": "The locomotive left the station on time; passengers found seats in the "
                 "carriage.",
    "cake.txt": "Whisk the eggs, fold in the flour and bake the sponge for forty minutes.",
    "court.txt": "The judge heard the appeal and the jury returned its verdict.",
}
# each shares no word with its document (checked below); a document found first at random
# for both would be a 1 in 36 chance
PARAPHRASES = {"borrowing money to buy a home": "mortgage.txt",
               "a mountain spewing molten rock": "volcano.txt"}


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def onnx_config(folder: Path, database_url: str, model: Path, **embedding: Any) -> Path:
    path = write_config(folder, database=database_url, mlflow={"window_s": 0.5},
                        embedding={"provider": "onnx", "model_dir": str(model), **embedding})
    for name, text in DOCUMENTS.items():
        (folder / "zones" / "docs" / name).write_text(text)
    return path


def test_a_paraphrase_finds_its_document(tmp_path: Path, database_url: str,
                                         onnx_model: Path) -> None:
    """A query sharing no word with the document it means finds it first; every chunk row
    records the model."""
    path = onnx_config(tmp_path, database_url, onnx_model)
    daemon = Daemon(path, "--once")
    assert daemon.run() == 0, daemon.problems()
    assert {c["model"] for c in Sinks(path).chunks()} == {ONNX_MODEL}
    for query, expected in PARAPHRASES.items():
        assert not words(query) & words(DOCUMENTS[expected])
        finder = Daemon(path, "search", query, "--json", "--limit", "3")
        assert finder.run(120) == 0, finder.output()[-2000:]
        hits = [e for e in finder.events if "score" in e]
        assert [h["source_path"] for h in hits][:1] == [expected], (query, hits)


def test_without_the_model_the_daemon_says_how_to_get_it(tmp_path: Path,
                                                         database_url: str) -> None:
    """No model in model_dir: exit 2, one line naming the fetch command; nothing ingested."""
    path = onnx_config(tmp_path, database_url, tmp_path / "no-model")
    daemon = Daemon(path, "--once")
    assert daemon.run() == 2
    assert "python -m daemon model fetch minilm --dir" in daemon.output()
    assert "Traceback" not in daemon.output()
