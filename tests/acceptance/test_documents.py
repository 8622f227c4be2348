"""Real documents: every supported format goes from a drop to a search hit; hostile PDFs end
in quarantine within their limits while the other files flow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import docx
import pytest

from tests.documents import bomb_pdf, endless_pdf, make_pdf
from tests.embedserver import Script, embedding_server
from tests.helpers import Daemon, Sinks, s3_config

pytestmark = pytest.mark.db

# one phrase per format, made of words no other file has, so the hashing embedder finds it
PHRASES = {
    "paper.pdf": "quantum lattice thermodynamics",
    "letter.docx": "orchard pruning schedule",
    "page.html": "volcanic basalt columns",
    "notes.md": "sourdough starter hydration",
    "table.csv": "turbine blade inspection",
    "records.json": "glacier meltwater salinity",
    "latin1.txt": "café crème brûlée",
    "wide.txt": "nightingale migration corridor",
}


def _docx(path: Path, phrase: str) -> None:
    document = docx.Document()
    document.core_properties.title = "Pruning"
    document.core_properties.author = "Ada Lovelace"
    document.add_heading("Orchard notes", level=1)
    document.add_paragraph(f"The {phrase} for the winter.")
    document.save(str(path))


def write_formats(zone: Path) -> None:
    """One file of each format in `zone`, each holding its phrase."""
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "paper.pdf").write_bytes(make_pdf(
        [f"Abstract. We study {PHRASES['paper.pdf']}.", "Second page."],
        {"Title": "Lattice Physics", "Author": "Marie Curie; Paul Dirac",
         "CreationDate": "D:20210305120000Z"}))
    _docx(zone / "letter.docx", PHRASES["letter.docx"])
    (zone / "page.html").write_text(
        f"<html lang='en'><head><title>Rocks</title><script>var x;</script></head>"
        f"<body><p>About {PHRASES['page.html']}.</p></body></html>")
    (zone / "notes.md").write_text(f"# Bread\n\nMy {PHRASES['notes.md']} notes.\n")
    (zone / "table.csv").write_text(f"part,check\nrotor,{PHRASES['table.csv']}\n")
    (zone / "records.json").write_text(json.dumps({"topic": PHRASES["records.json"]}))
    (zone / "latin1.txt").write_bytes(f"Dessert: {PHRASES['latin1.txt']}.".encode("cp1252"))
    (zone / "wide.txt").write_bytes(f"The {PHRASES['wide.txt']}.".encode("utf-16"))


def search(path: Path, query: str, *args: str) -> list[dict[str, Any]]:
    daemon = Daemon(path, "search", query, "--json", *args)
    assert daemon.run(120) == 0, daemon.output()[-2000:]
    return [e for e in daemon.events if "score" in e]


def test_every_format_round_trips_to_a_search_hit(tmp_path: Path, database_url: str,
                                                  s3_endpoint: str, bucket: str) -> None:
    """Each format's phrase finds its own file first; metadata says what the file told."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket)
    write_formats(tmp_path / "zones" / "docs")
    daemon = Daemon(path, "--once")
    assert daemon.run() == 0, daemon.problems()
    for name, phrase in PHRASES.items():
        hits = search(path, phrase, "--limit", "3")
        assert hits and hits[0]["source_path"] == name, (name, hits)
        assert phrase.split()[0] in hits[0]["chunk"]
    meta = {d["source_path"]: json.loads(d["metadata"]) for d in Sinks(path).documents()}
    paper = {"title": "Lattice Physics", "authors": ["Marie Curie", "Paul Dirac"], "year": 2021,
             "pages": 2}
    assert meta["paper.pdf"] | paper == meta["paper.pdf"]
    assert meta["letter.docx"]["authors"] == ["Ada Lovelace"]
    assert meta["page.html"]["title"] == "Rocks" and meta["page.html"]["language"] == "en"
    assert meta["notes.md"]["title"] == "Bread"
    assert meta["table.csv"]["columns"] == ["part", "check"]
    assert meta["latin1.txt"]["encoding"] == "cp1252"
    assert meta["wide.txt"]["encoding"] == "utf_16"


def test_search_filters_and_plain_output(tmp_path: Path, database_url: str, s3_endpoint: str,
                                         bucket: str) -> None:
    """--zone and --doc-type narrow the results; without --json a ranked list is printed."""
    zones = [{"name": "docs", "path": "zones/docs", "settle_ms": 200},
             {"name": "papers", "path": "zones/papers", "settle_ms": 200,
              "doc_type": "research_paper"}]
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket, zones=zones)
    for zone in ("docs", "papers"):
        (tmp_path / "zones" / zone / "same.md").write_text(f"# {zone}\n\nshared topic words\n")
    assert Daemon(path, "--once").run() == 0
    assert {h["zone"] for h in search(path, "shared topic words")} == {"docs", "papers"}
    assert [h["zone"] for h in search(path, "shared topic words", "--zone", "papers")] == ["papers"]
    typed = search(path, "shared topic words", "--doc-type", "research_paper")
    assert [h["doc_type"] for h in typed] == ["research_paper"]
    plain = Daemon(path, "search", "shared topic words", "--limit", "1")
    assert plain.run(120) == 0
    assert "1. " in plain.output() and "same.md" in plain.output()


def test_hostile_pdfs_are_quarantined_within_limits(tmp_path: Path, database_url: str,
                                                    s3_endpoint: str, bucket: str) -> None:
    """An endless PDF stops at timeout_s, a bomb at the memory limit; the rest is stored."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket,
                     extraction={"timeout_s": 3, "memory": "64MiB"})
    zone = tmp_path / "zones" / "docs"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "loop.pdf").write_bytes(endless_pdf())
    (zone / "bomb.pdf").write_bytes(bomb_pdf())
    for i in range(20):
        (zone / f"fine-{i}.txt").write_text(f"an ordinary file number {i}")
    daemon = Daemon(path, "--once")
    assert daemon.run() == 1, daemon.problems()
    outcomes = {e["path"]: e["outcome"] for e in daemon.named("file_processed")}
    assert outcomes.pop("loop.pdf") == outcomes.pop("bomb.pdf") == "quarantined"
    assert set(outcomes.values()) == {"stored"} and len(outcomes) == 20
    quarantine = tmp_path / "var" / "quarantine" / "docs"
    loop = json.loads((quarantine / "loop.pdf.error.json").read_text())["reason"]
    bomb = json.loads((quarantine / "bomb.pdf.error.json").read_text())["reason"]
    assert "longer than 3 s" in loop
    assert "memory" in bomb


def test_an_http_embedding_endpoint_embeds_and_searches(tmp_path: Path, database_url: str,
                                                        s3_endpoint: str, bucket: str) -> None:
    """With provider http, chunks and queries are embedded by the endpoint, rows record its
    model, and its key (from the environment) is sent but never logged."""
    key = "sk-test-0123456789abcdef"
    script = Script(key=key)
    with embedding_server(script) as url:
        embedding = {"provider": "http", "model": "bge-test", "url": url, "batch_size": 16}
        path = s3_config(tmp_path, database_url, s3_endpoint, bucket, embedding=embedding)
        write_formats(tmp_path / "zones" / "docs")
        env = {"DROPZONE_EMBEDDING_API_KEY": key}
        daemon = Daemon(path, "--once", env=env)
        assert daemon.run() == 0, daemon.problems()
        finder = Daemon(path, "search", PHRASES["letter.docx"], "--json", env=env)
        assert finder.run(120) == 0
    assert next(e["source_path"] for e in finder.events if "score" in e) == "letter.docx"
    assert {c["model"] for c in Sinks(path).chunks()} == {"bge-test"}
    assert len(script.requests) >= 2
    assert key not in daemon.output() + finder.output()


def test_reembed_gives_stored_documents_another_model(tmp_path: Path, database_url: str,
                                                      s3_endpoint: str, bucket: str) -> None:
    """`reembed --replace` re-reads every stored document from the object store and swaps
    its chunks for the new model's; documents and objects stay as they were."""
    script = Script()
    with embedding_server(script) as url:
        path = s3_config(tmp_path, database_url, s3_endpoint, bucket,
                         embedding={"url": url, "batch_size": 16})
        write_formats(tmp_path / "zones" / "docs")
        assert Daemon(path, "--once").run() == 0
        sinks = Sinks(path)
        documents, objects = sinks.documents(), sinks.object_keys()
        again = Daemon(path, "reembed", "--provider", "http", "--model", "bge-test", "--replace")
        assert again.run(300) == 0, again.output()[-2000:]
        assert Daemon(path, "reembed", "--provider", "http", "--model", "bge-test").run() == 0
    assert {c["model"] for c in sinks.chunks()} == {"bge-test"}
    assert {c["document_id"] for c in sinks.chunks()} == {d["id"] for d in documents}
    assert sinks.documents() == documents and sinks.object_keys() == objects
    assert sum(len(r["input"]) for r in script.requests) == len(sinks.chunks())  # once each


@pytest.mark.semantic
def test_minilm_finds_a_document_by_meaning(tmp_path: Path, database_url: str,
                                            s3_endpoint: str, bucket: str) -> None:
    """With all-MiniLM-L6-v2, a query sharing no word with a document still finds it."""
    embedding = {"provider": "sentence", "model": "all-MiniLM-L6-v2", "dim": 384}
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket, embedding=embedding)
    zone = tmp_path / "zones" / "docs"
    zone.mkdir(parents=True, exist_ok=True)
    texts = {"felines.txt": "Cats are small domesticated carnivores that purr and hunt mice.",
             "finance.txt": "The quarterly earnings report showed revenue growth of 4%.",
             "weather.txt": "Heavy rain and strong winds are expected along the coast."}
    for name, text in texts.items():
        (zone / name).write_text(text)
    assert Daemon(path, "--once").run(600) == 0
    hits = search(path, "a pet kitten", "--limit", "3")
    assert hits[0]["source_path"] == "felines.txt", hits
    assert {c["model"] for c in Sinks(path).chunks()} == {"all-MiniLM-L6-v2"}


def test_large_files_stream_in_the_codec_of_their_first_block(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """Files too large to hold are decoded as they stream: cp1252 and UTF-16 stay readable."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket)
    zone = tmp_path / "zones" / "docs"
    zone.mkdir(parents=True, exist_ok=True)
    line = "Crème brûlée à la carte, über alles, 5 €.\n"
    (zone / "big-latin.txt").write_bytes((line * 8000).encode("cp1252"))  # ~330 KB
    (zone / "big-wide.txt").write_bytes((line * 4000).encode("utf-16"))  # ~330 KB
    assert Daemon(path, "--once").run() == 0
    sinks = Sinks(path)
    meta = {d["source_path"]: json.loads(d["metadata"]) for d in sinks.documents()}
    assert meta["big-latin.txt"]["encoding"] == "cp1252"
    assert meta["big-wide.txt"]["encoding"] == "utf_16"
    contents = [c["content"] for c in sinks.chunks()]
    assert len(contents) > 100 and all("\ufffd" not in c for c in contents)
    assert sum("Crème brûlée" in c for c in contents) > 100
