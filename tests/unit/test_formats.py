"""Formats: text and metadata out of PDF, DOCX, markup and text files, and plain-words failures."""

from __future__ import annotations

import io
import json
import random
import re
import zipfile
from datetime import datetime
from pathlib import Path

import docx
import pytest
from pypdf import PdfWriter

from daemon.errors import PermanentError
from daemon.formats import (
    UnreadableDocument,
    decode,
    extract,
    guess_language,
    kind_of,
    split_authors,
)
from tests.documents import make_pdf

INFO = {"Title": "On  Drop Zones", "Author": "Ann Lee and Bo Chen",
        "CreationDate": "D:20210305093000+01'00'"}
ENGLISH = ("The river is wide and the water is cold. It was the last boat of the day, "
           "and the people on it were tired. This is the way that it is for them.")
GERMAN = ("Der Fluss ist breit und das Wasser ist kalt. Es war das letzte Boot, und die "
          "Leute auf dem Boot sind müde. Das ist nicht die Art, wie sich ein Tag anfühlt.")
FRENCH = ("Le fleuve est large et les eaux sont froides. C'est le dernier bateau qui part, "
          "et les gens sont fatigués. Il ne reste pas une place pour des enfants dans le port.")


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def encrypted(pdf: bytes, user_password: str) -> bytes:
    writer = PdfWriter(clone_from=io.BytesIO(pdf))
    writer.encrypt(user_password=user_password, owner_password="owner")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# -- kinds ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "kind"), [
    ("a.pdf", "pdf"), ("dir/B.PDF", "pdf"), ("c.docx", "docx"), ("d.html", "html"),
    ("e.htm", "html"), ("f.xml", "html"), ("g.md", "markdown"), ("h.csv", "csv"),
    ("i.tsv", "csv"), ("j.jsonl", "json"), ("k.ndjson", "json"), ("l.txt", "text"),
    ("m.yaml", "text"), ("n.rst", "text"), ("o.doc", "unsupported"), ("p.png", "unsupported"),
])
def test_kind_by_extension(name: str, kind: str) -> None:
    """The extension decides, whatever the first bytes are."""
    head = b"%PDF-1.7" if kind not in ("pdf", "unsupported") else b""
    assert kind_of(name, head) == kind


def test_kind_by_magic_bytes_only_without_known_extension() -> None:
    """A name without a known extension is a PDF by its header, else unsupported."""
    assert kind_of("scan", b"%PDF-1.4\n%...") == "pdf"
    assert kind_of("report.bin", b"%PDF-1.4\n") == "pdf"
    assert kind_of("archive", b"PK\x03\x04word/document.xml") == "unsupported"
    assert kind_of("notes", b"plain words") == "unsupported"


def test_unknown_kind_is_a_programming_error(tmp_path: Path) -> None:
    """Asking for a kind with no extractor raises ValueError, not a document error."""
    with pytest.raises(ValueError, match="unsupported"):
        extract(write(tmp_path, "x.bin", b"x"), "unsupported")


# -- PDF -----------------------------------------------------------------------------------------

def test_pdf_text_and_metadata(tmp_path: Path) -> None:
    """A one-page PDF gives its text, page count, title, authors, creation date and year."""
    result = extract(write(tmp_path, "a.pdf", make_pdf(["Hello"], INFO)), "pdf")
    assert result.text == "Hello"
    assert result.metadata == {"pages": 1, "title": "On Drop Zones",
                               "authors": ["Ann Lee", "Bo Chen"], "created": "2021-03-05",
                               "year": 2021, "chars": 5}
    json.dumps(result.metadata)


@pytest.mark.parametrize("compress", [False, True])
def test_pdf_pages_in_order(tmp_path: Path, compress: bool) -> None:
    """Pages are joined by blank lines, compressed content streams or not."""
    pages = ["First page", "Second page\nwith (two) lines", "Third page"]
    result = extract(write(tmp_path, "m.pdf", make_pdf(pages, compress=compress)), "pdf")
    assert result.text == "First page\n\nSecond page\nwith (two) lines\n\nThird page"
    assert result.metadata["pages"] == 3
    assert "title" not in result.metadata


def test_pdf_without_info_or_with_bad_date(tmp_path: Path) -> None:
    """A creation date that is not a PDF date is left out; the rest of the metadata stays."""
    info = {"Title": "Odd", "CreationDate": "last tuesday"}
    result = extract(write(tmp_path, "d.pdf", make_pdf(["x"], info)), "pdf")
    assert result.metadata["title"] == "Odd"
    assert "created" not in result.metadata and "year" not in result.metadata


def test_pdf_unicode_title(tmp_path: Path) -> None:
    """A UTF-16 title string is decoded."""
    pdf = make_pdf(["x"], {"Title": "Über Ströme — 流"})
    assert extract(write(tmp_path, "u.pdf", pdf), "pdf").metadata["title"] == "Über Ströme — 流"


def test_pdf_encrypted_with_a_password_is_unreadable(tmp_path: Path) -> None:
    """A PDF that needs a user password fails permanently, saying so."""
    path = write(tmp_path, "e.pdf", encrypted(make_pdf(["Secret"], INFO), "hunter2"))
    with pytest.raises(UnreadableDocument, match=r"^pdf: encrypted, no password$") as caught:
        extract(path, "pdf")
    assert isinstance(caught.value, PermanentError)


def test_pdf_encrypted_with_empty_password_is_read(tmp_path: Path) -> None:
    """A PDF encrypted only against printing or copying opens with the empty password."""
    path = write(tmp_path, "r.pdf", encrypted(make_pdf(["Open text"], INFO), ""))
    result = extract(path, "pdf")
    assert result.text == "Open text"
    assert result.metadata["title"] == "On Drop Zones"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not a pdf"])
def test_pdf_corrupt_is_unreadable(tmp_path: Path, damage: str) -> None:
    """Truncated, garbage and empty files fail with a 'pdf: cannot parse' reason."""
    good = make_pdf(["Hello"] * 3, INFO)
    data = {"truncated": good[: len(good) // 2],
            "garbage": b"%PDF-1.4\n" + random.Random(1).randbytes(4000),
            "empty": b"", "not a pdf": b"hello world\n"}[damage]
    with pytest.raises(UnreadableDocument, match=r"^pdf: cannot parse: \S"):
        extract(write(tmp_path, "bad.pdf", data), "pdf")


def test_pdf_truncated_at_max_chars(tmp_path: Path) -> None:
    """Text stops at max_chars and says it was cut; later pages are not read."""
    pages = ["a" * 40, "b" * 40, "c" * 40]
    result = extract(write(tmp_path, "t.pdf", make_pdf(pages)), "pdf", max_chars=50)
    assert result.text == "a" * 40 + "\n\n" + "b" * 8
    assert result.metadata["truncated"] is True
    assert result.metadata["chars"] == 50


# -- DOCX ----------------------------------------------------------------------------------------

def make_docx(path: Path) -> Path:
    document = docx.Document()
    document.add_heading("Quarterly Report", level=1)
    document.add_paragraph("The first paragraph is about the river.")
    document.add_paragraph("")
    table = document.add_table(rows=2, cols=2)
    for (row, col), value in {(0, 0): "Name", (0, 1): "Count", (1, 0): "boats",
                              (1, 1): "7"}.items():
        table.cell(row, col).text = value
    document.add_paragraph("The last paragraph.")
    properties = document.core_properties
    properties.title, properties.author, properties.language = "Report", "Ann Lee; Bo Chen", "en-GB"
    properties.created = datetime(2019, 11, 2, 8, 30)
    document.save(str(path))
    return path


def test_docx_text_and_metadata(tmp_path: Path) -> None:
    """Heading, paragraphs and table rows come in document order, with the core properties."""
    result = extract(make_docx(tmp_path / "r.docx"), "docx")
    assert result.text == ("Quarterly Report\n\nThe first paragraph is about the river.\n\n"
                           "Name\tCount\nboats\t7\n\nThe last paragraph.")
    assert result.metadata == {"title": "Report", "authors": ["Ann Lee", "Bo Chen"],
                               "language": "en", "created": "2019-11-02", "year": 2019,
                               "chars": len(result.text)}


def test_docx_without_core_properties_has_no_invented_title(tmp_path: Path) -> None:
    """python-docx's made-up 'Word Document' title does not become metadata."""
    source = make_docx(tmp_path / "r.docx")
    stripped = tmp_path / "s.docx"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(stripped, "w") as new:
        for item in old.infolist():
            data = old.read(item)
            if item.filename == "_rels/.rels":
                data = re.sub(rb"<Relationship [^>]*docProps/core\.xml[^>]*/>", b"", data)
            if item.filename != "docProps/core.xml":
                new.writestr(item, data)
    result = extract(stripped, "docx")
    assert result.text.startswith("Quarterly Report")
    assert "title" not in result.metadata and "authors" not in result.metadata


def test_docx_that_is_not_a_zip_is_unreadable(tmp_path: Path) -> None:
    """Random bytes named .docx fail with a plain reason."""
    path = write(tmp_path, "b.docx", random.Random(2).randbytes(3000))
    with pytest.raises(UnreadableDocument, match=r"^docx: not a zip archive$"):
        extract(path, "docx")


def test_docx_zip_without_a_document_is_unreadable(tmp_path: Path) -> None:
    """A zip archive that is not a Word document fails with 'docx: cannot parse'."""
    path = tmp_path / "z.docx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not word")
    with pytest.raises(UnreadableDocument, match=r"^docx: cannot parse: "):
        extract(path, "docx")


# -- HTML ----------------------------------------------------------------------------------------

PAPER = """<!DOCTYPE html>
<html lang="fr-CA"><head>
<title>Journal of Rivers | Site</title>
<meta name="citation_title" content="Flow  of Cold Water">
<meta name="citation_author" content="Lee, Ann">
<meta name="citation_author" content="Chen, Bo">
<meta name="citation_publication_date" content="2020/06/30">
<style>body { color: red; }</style>
<script>var hidden = "do not index";</script>
</head><body>
<h1>Flow of
   Cold Water</h1><p>First &amp; foremost.</p><p>Line one<br>line two</p>
<ul><li>one</li><li>two</li></ul>
</body></html>"""


def test_html_text_drops_scripts_and_keeps_blocks(tmp_path: Path) -> None:
    """Scripts and styles vanish, entities decode, blocks get lines of their own."""
    result = extract(write(tmp_path, "p.html", PAPER), "html")
    assert result.text == ("Journal of Rivers | Site\n\nFlow of Cold Water\n\nFirst & foremost."
                           "\n\nLine one\nline two\n\none\n\ntwo")


def test_html_citation_metadata_wins(tmp_path: Path) -> None:
    """Highwire citation tags give title, authors and year; <html lang> gives the language."""
    metadata = extract(write(tmp_path, "p.html", PAPER), "html").metadata
    assert metadata["title"] == "Flow of Cold Water"
    assert metadata["authors"] == ["Lee, Ann", "Chen, Bo"]
    assert metadata["year"] == 2020
    assert metadata["language"] == "fr"
    assert metadata["encoding"] == "utf_8"


def test_html_plain_title_and_author(tmp_path: Path) -> None:
    """Without citation tags, <title> and meta author are used, and the language is guessed."""
    page = (f"<html><head><title> Home </title><meta name='Author' content='Ann Lee, Bo Chen'>"
            f"</head><body><p>{GERMAN}</p></body></html>")
    metadata = extract(write(tmp_path, "h.htm", page), "html").metadata
    assert metadata["title"] == "Home"
    assert metadata["authors"] == ["Ann Lee", "Bo Chen"]
    assert metadata["language"] == "de"


# -- text kinds and decoding ---------------------------------------------------------------------

ACCENTED = ("Le café coûte 5 €. Über die Brücke gehen wir später. Señor, ¿qué tal? "
            "Naïve résumé, déjà vu, à la carte.\n") * 3


@pytest.mark.parametrize(("encoded", "encoding"), [
    (ACCENTED.encode("cp1252"), "cp1252"),
    (ACCENTED.encode("utf-16"), "utf_16"),
    (ACCENTED.encode("utf-16-be").join([b"\xfe\xff", b""]), "utf_16"),
    (ACCENTED.encode("utf-8-sig"), "utf_8_sig"),
    (ACCENTED.encode("utf-8"), "utf_8"),
])
def test_text_decodes_with_the_right_encoding(tmp_path: Path, encoded: bytes,
                                               encoding: str) -> None:
    """cp1252, UTF-16 with either BOM, and UTF-8 with or without BOM all decode exactly."""
    result = extract(write(tmp_path, "t.txt", encoded), "text")
    assert result.text == ACCENTED
    assert result.metadata["encoding"] == encoding
    assert result.metadata["chars"] == len(ACCENTED)


@pytest.mark.parametrize(("text", "encoding"), [
    ("Příliš žluťoučký kůň úpěl ďábelské ódy. Česká republika je vnitrozemský stát ve střední "
     "Evropě, hlavním městem je Praha.\n", "cp1250"),
    ("Россия является крупнейшим государством мира по площади территории. Столица страны — "
     "Москва.\n", "cp1251"),
])
def test_other_code_pages_still_decode(tmp_path: Path, text: str, encoding: str) -> None:
    """The lean towards cp1252 does not swallow Czech or Russian files."""
    result = extract(write(tmp_path, "t.txt", text.encode(encoding)), "text")
    assert (result.text, result.metadata["encoding"]) == (text, encoding)


def test_nul_bytes_mean_binary(tmp_path: Path) -> None:
    """A text-named file with NUL bytes and no UTF-16 BOM is unreadable as binary."""
    with pytest.raises(UnreadableDocument, match=r"^binary content$"):
        extract(write(tmp_path, "x.txt", b"ELF\x00\x01\x02 text"), "text")


def test_undecodable_bytes_fall_back_to_replacement() -> None:
    """Bytes that fit no encoding still decode, as UTF-8 with replacement characters."""
    text, encoding = decode(bytes(range(1, 32)) + bytes(range(128, 256)))
    assert isinstance(text, str) and encoding


def test_markdown_title_is_first_heading_outside_code(tmp_path: Path) -> None:
    """A '# ' line inside a fenced block is code, not the title; closing #s are dropped."""
    text = "intro\n```sh\n# not a title\n```\n## sub\n# The C# Guide ##\nbody\n"
    result = extract(write(tmp_path, "r.md", text), "markdown")
    assert result.text == text
    assert result.metadata["title"] == "The C# Guide"


@pytest.mark.parametrize(("name", "sep"), [("d.csv", ","), ("d.tsv", "\t")])
def test_csv_rows_and_columns(tmp_path: Path, name: str, sep: str) -> None:
    """Rows count the records after the header; columns name the header cells."""
    text = sep.join(["id", "name", '"note, quoted"']) + f"\n1{sep}a{sep}x\n\n2{sep}b{sep}y\n"
    result = extract(write(tmp_path, name, text), "csv")
    assert result.text == text
    assert result.metadata["rows"] == 2
    assert result.metadata["columns"] == ["id", "name", "note, quoted"]


def test_csv_columns_are_capped(tmp_path: Path) -> None:
    """At most 50 column names are kept."""
    header = ",".join(f"c{i}" for i in range(80))
    result = extract(write(tmp_path, "w.csv", header + "\n"), "csv")
    assert result.metadata["columns"] == [f"c{i}" for i in range(50)]
    assert result.metadata["rows"] == 0


@pytest.mark.parametrize(("name", "text", "valid"), [
    ("a.json", '{"a": [1, 2]}', True), ("b.json", '{"a": ', False),
    ("c.jsonl", '{"a": 1}\n\n{"b": 2}\n', True), ("d.ndjson", '{"a": 1}\n{"b": \n', False),
])
def test_json_validity(tmp_path: Path, name: str, text: str, valid: bool) -> None:
    """JSON and JSON Lines keep their text and say whether they parse."""
    result = extract(write(tmp_path, name, text), "json")
    assert result.text == text
    assert result.metadata["json_valid"] is valid


def test_text_truncated_at_max_chars(tmp_path: Path) -> None:
    """Plain text is cut at max_chars and marked truncated; shorter text is not."""
    path = write(tmp_path, "long.txt", "x" * 100)
    result = extract(path, "text", max_chars=30)
    assert (result.text, result.metadata["truncated"], result.metadata["chars"]) == ("x" * 30,
                                                                                     True, 30)
    assert "truncated" not in extract(path, "text", max_chars=100).metadata


# -- language and authors ------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "language"), [
    (ENGLISH, "en"), (GERMAN, "de"), (FRENCH, "fr"),
    ("Qwz plorf snee vonk trabb glim fesk. " * 20, None), ("the cat", None), ("", None),
])
def test_language_guess(text: str, language: str | None) -> None:
    """A clear stopword winner names the language; gibberish and short text name none."""
    assert guess_language(text) == language


def test_word_counts_split_ascii_as_the_regex_does() -> None:
    """ASCII text split in C counts the very words `\\w+` finds; other text takes the regex."""
    from collections import Counter

    from daemon.formats import _word_counts

    pieces = ["the", "THE", "x_y", "3d", "d'un", "le-les", "\x00", "\x1c", "\x7f", "\t", ".", " ",
              "\n", "é", "più", "\xa0", "\u2028", "İ", "_"]
    rnd = random.Random(7)
    for _ in range(500):
        text = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 40))).lower()
        assert _word_counts(text) == Counter(re.findall(r"\w+", text))


def test_collapse_spaces_is_the_regex() -> None:
    """HTML text runs collapse their whitespace exactly as `re.sub(r"\\s+", " ", ...)` did."""
    from daemon.formats import collapse_spaces

    pieces = ["a", "bc", " ", "  ", "\t", "\n", "\r\n", "\x0b", "\x1c", "\x85", "\xa0", "\u2028",
              "\u3000", "\u200b", "é", "\x00"]
    rnd = random.Random(3)
    for _ in range(2000):
        text = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 12)))
        assert collapse_spaces(text) == re.sub(r"\s+", " ", text)


def test_language_lands_in_metadata(tmp_path: Path) -> None:
    """Text files get the guessed language; gibberish gets no language key."""
    assert extract(write(tmp_path, "e.txt", ENGLISH), "text").metadata["language"] == "en"
    assert "language" not in extract(write(tmp_path, "g.txt", "zzq " * 50), "text").metadata


@pytest.mark.parametrize(("field", "names"), [
    ("Ann Lee", ["Ann Lee"]),
    ("Ann Lee; Bo Chen;", ["Ann Lee", "Bo Chen"]),
    ("Ann Lee and Bo Chen & Cy Dee", ["Ann Lee", "Bo Chen", "Cy Dee"]),
    ("Ann Lee, Bo Chen, and Cy Dee", ["Ann Lee", "Bo Chen", "Cy Dee"]),
    ("Lee, Ann", ["Lee, Ann"]),
    ("Lee, A. and Chen, B.", ["Lee, A.", "Chen, B."]),
    ("", []),
])
def test_split_authors(field: str, names: list[str]) -> None:
    """Semicolons and 'and' separate names; commas only between full names."""
    assert split_authors(field) == names


def test_sniff_codec_judges_a_large_file_by_its_first_block() -> None:
    """A UTF-8 character cut at the block's end is still UTF-8; cp1252, BOMs and NULs as decode."""
    from daemon.formats import BinaryContent, sniff_codec

    utf8 = ("é" * 10).encode("utf-8")
    assert sniff_codec(utf8[:-1]) == "utf_8"
    assert sniff_codec(("Crème brûlée, über alles. " * 20).encode("cp1252")) == "cp1252"
    assert sniff_codec("wide".encode("utf-16")) == "utf_16"
    assert sniff_codec(b"\xef\xbb\xbfbom") == "utf_8_sig"
    with pytest.raises(BinaryContent):
        sniff_codec(b"ab\x00cd")
