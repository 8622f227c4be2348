"""Formats: the text and metadata of one file on disk, for each kind of document the daemon reads.

Pure and synchronous so that the caller can run it in a sandboxed child process that bounds its
time and memory: parsers fed hostile files may loop, balloon or crash, and that must not take the
daemon down. Whatever a parser chokes on becomes `UnreadableDocument`, a permanent error with a
one-line reason; MemoryError alone passes through untouched, for the caller's limits to report.

Metadata stays small and JSON-serialisable: `chars` always; `title`, `authors`, `created` (an ISO
date), `year`, `language`, `pages`, `encoding`, ... whenever the kind tells them cheaply. The
PDF and DOCX libraries are imported only when such a file comes, so a child that reads text
files never pays for them.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from html.parser import HTMLParser
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Any

from daemon.errors import PermanentError

if TYPE_CHECKING:
    from docx.document import Document as WordDocument
    from docx.opc.coreprops import CoreProperties
    from docx.table import Table
    from pypdf import PdfReader

_KINDS: dict[str, str] = {
    ".pdf": "pdf",
    ".docx": "docx",
    **dict.fromkeys((".html", ".htm", ".xhtml", ".xml"), "html"),
    **dict.fromkeys((".md", ".markdown"), "markdown"),
    **dict.fromkeys((".csv", ".tsv"), "csv"),
    **dict.fromkeys((".json", ".jsonl", ".ndjson"), "json"),
    **dict.fromkeys((".txt", ".text", ".rst", ".log", ".yaml", ".yml"), "text"),
}
JSON_CHECK_CHARS = 10_000_000  # larger JSON is not parsed just to say whether it is valid
MAX_FIELD_CHARS = 1000  # a title or a name longer than this is cut: metadata must stay small
MAX_AUTHORS = 50
MAX_COLUMNS = 50
_BOMS = ((codecs.BOM_UTF32_LE, "utf_32"), (codecs.BOM_UTF32_BE, "utf_32"),
         (codecs.BOM_UTF16_LE, "utf_16"), (codecs.BOM_UTF16_BE, "utf_16"))


class UnreadableDocument(PermanentError):
    """The file is corrupt, encrypted or malformed; `reason` says how in one plain line."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class BinaryContent(UnreadableDocument):
    """NUL bytes in what should be text: the file is recorded, but has no text to search."""


@dataclass
class Extracted:
    text: str
    metadata: dict[str, Any]  # JSON-serialisable only


def kind_of(name: str, head: bytes) -> str:
    """The kind of a file, by its extension, else by its first bytes (only PDFs are recognised so).

    A DOCX is one only by its name: sniffing would mean opening zip archives here.
    """
    kind = _KINDS.get(PurePosixPath(name).suffix.lower())
    if kind:
        return kind
    return "pdf" if head.startswith(b"%PDF-") else "unsupported"


def extract(path: Path, kind: str, max_chars: int = 50_000_000) -> Extracted:
    """Text and metadata of one file of that kind; the text is cut at `max_chars`."""
    if kind in _DOCUMENTS:
        return _DOCUMENTS[kind](path, max_chars)
    return extract_bytes(path.read_bytes(), path.name, kind, max_chars)


def extract_bytes(data: bytes, name: str, kind: str, max_chars: int = 50_000_000) -> Extracted:
    """The same for a text kind (not pdf or docx) already in memory; `name` gives its suffix."""
    if kind not in _TEXTS:
        raise ValueError(f"no extractor for kind {kind!r}")
    text, encoding = decode(data)
    text, metadata = _TEXTS[kind](text, PurePosixPath(name))
    return _finish(text[:max_chars], {"encoding": encoding, **metadata}, len(text) > max_chars)


def _finish(text: str, metadata: dict[str, Any], truncated: bool) -> Extracted:
    if "language" not in metadata and (language := guess_language(text)):
        metadata["language"] = language
    if truncated:
        metadata["truncated"] = True
    metadata["chars"] = len(text)
    return Extracted(text, metadata)


# -- failures ------------------------------------------------------------------------------------

@contextmanager
def _parsing(kind: str) -> Iterator[None]:
    """Any failure of a parser on a file is the file's: it becomes UnreadableDocument.

    Parsers fed malformed input raise nearly anything (KeyError, struct.error, RecursionError, ...),
    so the net is wide; MemoryError is the caller's to see, and so passes.
    """
    try:
        yield
    except (UnreadableDocument, MemoryError):
        raise
    except Exception as exc:
        raise UnreadableDocument(f"{kind}: cannot parse: {_cause(exc)}") from exc


def _cause(exc: BaseException) -> str:
    lines = str(exc).strip(" '\"\n").splitlines()  # KeyError quotes its message
    return (lines[0] if lines else type(exc).__name__)[:160]


# -- PDF -----------------------------------------------------------------------------------------

def _pdf(path: Path, max_chars: int) -> Extracted:
    from pypdf import PdfReader

    failures: list[Exception] = []
    with _parsing("pdf"):
        reader = PdfReader(path)
        _unlock(reader)
        pages = len(reader.pages)
        if not pages:
            raise UnreadableDocument("pdf: no pages")
        text, truncated = _gather(_page_texts(reader, failures), max_chars)
        metadata = {"pages": pages, **_pdf_info(reader)}
    if len(failures) == pages:
        raise UnreadableDocument(f"pdf: cannot parse: {_cause(failures[0])}")
    if failures:
        metadata["unreadable_pages"] = len(failures)
    return _finish(text, metadata, truncated)


def _unlock(reader: PdfReader) -> None:
    """Many PDFs are encrypted with an empty user password, only to forbid printing or copying."""
    if reader.is_encrypted and not reader.decrypt(""):
        raise UnreadableDocument("pdf: encrypted, no password")


def _page_texts(reader: PdfReader, failures: list[Exception]) -> Iterator[str]:
    """Each page's text; a page that cannot be read is skipped and its error kept in `failures`."""
    for page in reader.pages:
        try:
            text = page.extract_text()
        except MemoryError:
            raise
        except Exception as exc:
            failures.append(exc)
            continue
        yield text


def _pdf_info(reader: PdfReader) -> dict[str, Any]:
    info = reader.metadata
    if info is None:
        return {}
    try:
        created = info.creation_date
    except ValueError:  # a /CreationDate that is not a PDF date
        created = None
    author = info.author
    authors = split_authors(author) if isinstance(author, str) else []
    return _compact({"title": _clean(info.title), "authors": authors, **_dated(created)})


# -- DOCX ----------------------------------------------------------------------------------------

def _docx(path: Path, max_chars: int) -> Extracted:
    import docx

    if not zipfile.is_zipfile(path):
        raise UnreadableDocument("docx: not a zip archive")
    with _parsing("docx"):
        document = docx.Document(str(path))
        text, truncated = _gather(_docx_blocks(document), max_chars)
        metadata = _docx_properties(document)
    return _finish(text, metadata, truncated)


def _docx_blocks(document: WordDocument) -> Iterator[str]:
    """Paragraphs (headings included) and tables, in document order."""
    from docx.table import Table

    for block in document.iter_inner_content():
        yield _table_text(block) if isinstance(block, Table) else block.text


def _table_text(table: Table) -> str:
    """One line per row, cells separated by tabs; a cell spanning columns is written once."""
    lines = []
    for row in table.rows:
        cells = row.cells
        unique = [cell for i, cell in enumerate(cells) if i == 0 or cell is not cells[i - 1]]
        lines.append("\t".join(cell.text.strip() for cell in unique))
    return "\n".join(lines)


def _docx_properties(document: WordDocument) -> dict[str, Any]:
    properties = _core_properties(document)
    if properties is None:
        return {}
    return _compact({
        "title": _clean(properties.title),
        "authors": split_authors(properties.author or ""),
        "language": _language_tag(properties.language),
        **_dated(properties.created),
    })


def _core_properties(document: WordDocument) -> CoreProperties | None:
    """The file's own core properties; python-docx would invent some ('Word Document') if none."""
    from docx.opc.constants import RELATIONSHIP_TYPE

    try:
        document.part.package.part_related_by(RELATIONSHIP_TYPE.CORE_PROPERTIES)
    except KeyError:
        return None
    properties: CoreProperties = document.core_properties
    return properties


# -- text kinds: each turns decoded text into (text, metadata) -----------------------------------

def decode(data: bytes) -> tuple[str, str]:
    """The text in `data` and the codec that read it.

    UTF-8, with or without a BOM, then UTF-16 or UTF-32 by their BOM, else charset-normalizer's
    guess. Other files with NUL bytes are binary, whatever their name says.
    """
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return data.decode(codec, errors="replace"), codec
    if b"\x00" in data:
        raise BinaryContent("binary content")
    if data.startswith(codecs.BOM_UTF8):
        return data.decode("utf_8_sig", errors="replace"), "utf_8_sig"
    try:
        return data.decode("utf_8"), "utf_8"
    except UnicodeDecodeError:
        return _guess_encoding(data)


def sniff_codec(head: bytes) -> str:
    """The codec of a large text file, judged on its first block, as `decode` would judge it
    (a multi-byte character cut at the block's end is not held against UTF-8)."""
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return codec
    if b"\x00" in head:
        raise BinaryContent("binary content")
    if head.startswith(codecs.BOM_UTF8):
        return "utf_8_sig"
    try:
        head.decode("utf_8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            return _guess_encoding(head)[1]
    return "utf_8"


def _guess_encoding(data: bytes) -> tuple[str, str]:
    """charset-normalizer's pick, leaning to cp1252 among the single-byte Latin code pages.

    Its guesses between cp1250, cp1252 and cp1257 are weak on short text (French, English and
    Italian samples came out as cp1250 or cp1257, with wrong letters), while Western European
    files are by far the commonest ones that are not UTF-8: cp1252 wins when it is among the
    matches and looks nearly as clean as the best one. Bytes that fit no encoding at all are
    read as UTF-8 with replacement characters.
    """
    import charset_normalizer  # only text that is not UTF-8 needs it

    matches = charset_normalizer.from_bytes(data)
    best = matches.best()
    if best is None:
        return data.decode("utf_8", errors="replace"), "utf_8"
    if "cp1252" in best.could_be_from_charset:  # the very same text: call it by its usual name
        return str(best), "cp1252"
    western = (m for m in matches if m.encoding == "cp1252" and m.chaos <= best.chaos + 0.1)
    chosen = next(western, best)
    return str(chosen), chosen.encoding


def _text(text: str, path: PurePath) -> tuple[str, dict[str, Any]]:
    return text, {}


def _markdown(text: str, path: PurePath) -> tuple[str, dict[str, Any]]:
    return text, _compact({"title": _clean(_first_heading(text))})


def _first_heading(markdown: str) -> str | None:
    """The first `# ` heading outside fenced code blocks, without its optional closing #s."""
    fenced = False
    for line in io.StringIO(markdown):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and line.startswith("# "):
            return re.sub(r"\s+#+\s*$", "", line[2:].strip())
    return None


def _csv(text: str, path: PurePath) -> tuple[str, dict[str, Any]]:
    """`rows` counts the non-blank records after the header; `columns` names the header's cells."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    records = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(records, [])
        rows = sum(1 for record in records if record)
    except csv.Error:  # a field over csv's size limit: the text is still good
        return text, {}
    return text, {"rows": rows, "columns": [cell.strip()[:200] for cell in header[:MAX_COLUMNS]]}


def _json(text: str, path: PurePath) -> tuple[str, dict[str, Any]]:
    if len(text) >= JSON_CHECK_CHARS:
        return text, {}
    lines = path.suffix.lower() in (".jsonl", ".ndjson")
    return text, {"json_valid": _json_valid(text.splitlines() if lines else [text])}


def _json_valid(documents: list[str]) -> bool:
    try:
        for document in documents:
            if document.strip():
                json.loads(document)
    except (ValueError, RecursionError):
        return False
    return True


def _html(text: str, path: PurePath) -> tuple[str, dict[str, Any]]:
    markup = Markup()
    markup.feed(text)
    markup.close()
    return markup.text(), _html_metadata(markup)


_TEXTS: dict[str, Callable[[str, PurePath], tuple[str, dict[str, Any]]]] = {
    "text": _text, "markdown": _markdown, "csv": _csv, "json": _json, "html": _html,
}
_DOCUMENTS: dict[str, Callable[[Path, int], Extracted]] = {"pdf": _pdf, "docx": _docx}


# -- HTML and XML --------------------------------------------------------------------------------

_SKIPPED = frozenset({"script", "style"})
_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption",
    "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main",
    "nav", "ol", "p", "pre", "section", "table", "td", "th", "title", "tr", "ul",
})


def collapse_spaces(text: str) -> str:
    r"""`re.sub(r"\s+", " ", text)` by str.split (the same whitespace), without the regex."""
    words = text.split()
    if not words:
        return " " if text else ""
    return ((" " if text[0].isspace() else "") + " ".join(words)
            + (" " if text[-1].isspace() else ""))


class Markup(HTMLParser):
    """Markup to text (blocks on lines of their own), with the title, language and meta tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.metas: dict[str, list[str]] = {}
        self.lang: str | None = None
        self.title: str | None = None
        self._title: list[str] | None = None  # the first <title>'s text while inside it
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag in _SKIPPED:
            self._skip += 1
        elif tag == "meta" and found.get("name") and found.get("content"):
            self.metas.setdefault(str(found["name"]).lower(), []).append(str(found["content"]))
        elif tag == "html":
            self.lang = found.get("lang") or found.get("xml:lang")
        elif tag == "title" and self.title is None:
            self._title = []
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED and self._skip:
            self._skip -= 1
        if tag == "title" and self._title is not None:
            self.title, self._title = "".join(self._title), None
        if tag in _BLOCKS and tag != "br":
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._title is not None:
            self._title.append(data)
        self.parts.append(collapse_spaces(data))  # so that only blocks start new lines

    def push(self, text: str, final: bool = False) -> str:
        """Incremental use, for a large file read in blocks: the text of what came so far."""
        self.feed(text)
        if final:
            self.close()
        out, self.parts = re.sub(r" *\n *", "\n", "".join(self.parts)), []
        return out

    def text(self) -> str:
        """Whitespace collapsed as a browser would; blocks separated by one blank line."""
        text = re.sub(r" *\n *", "\n", "".join(self.parts))
        return re.sub(r"\n{3,}", "\n\n", text).strip()


def _html_metadata(markup: Markup) -> dict[str, Any]:
    """Highwire `citation_*` tags (on most research paper pages) win over <title> and `author`."""
    metas = markup.metas

    def first(*names: str) -> str | None:
        return next((metas[name][0] for name in names if name in metas), None)

    authors = [name for name in map(_clean, metas.get("citation_author", [])) if name]
    return _compact({
        "title": _clean(first("citation_title") or markup.title),
        "authors": authors[:MAX_AUTHORS] or split_authors(first("author") or ""),
        "year": _year(first("citation_publication_date", "citation_date", "citation_online_date")),
        "language": _language_tag(markup.lang),
    })


def _year(text: str | None) -> int | None:
    found = re.search(r"\b\d{4}\b", text or "")
    return int(found.group()) if found else None


# -- shared helpers ------------------------------------------------------------------------------

def _gather(blocks: Iterable[str], max_chars: int) -> tuple[str, bool]:
    """Non-empty blocks joined by blank lines; stops pulling blocks once past `max_chars`."""
    kept: list[str] = []
    size = -2  # the length of the joined text: no separator before the first block
    for block in filter(None, (block.strip() for block in blocks)):
        kept.append(block)
        size += len(block) + 2
        if size > max_chars:
            break
    text = "\n\n".join(kept)
    return text[:max_chars], len(text) > max_chars


def split_authors(field: str) -> list[str]:
    """The names in an author field.

    ';', ' and ' and ' & ' always separate names. ',' separates them only when every part has
    two or more words ('Ann Lee, Bo Chen'), since 'Lee, Ann' is one name written last-first.
    """
    names = []
    for part in re.split(r"\s*;\s*|\s+and\s+|\s+&\s+", field):
        pieces = [piece.strip() for piece in part.split(",") if piece.strip()]
        if all(len(piece.split()) > 1 for piece in pieces):
            names.extend(pieces)
        else:
            names.append(part)
    cleaned = (_clean(name.strip(" ,")) for name in names)
    return [name for name in cleaned if name][:MAX_AUTHORS]


def _clean(value: object) -> str | None:
    """A string field with its whitespace collapsed and its length bounded; None if empty."""
    if not isinstance(value, str):
        return None
    return " ".join(value.split())[:MAX_FIELD_CHARS] or None


def _dated(value: date | None) -> dict[str, Any]:
    """`created` (YYYY-MM-DD) and `year` from a date or datetime."""
    if value is None:
        return {}
    return {"created": value.strftime("%Y-%m-%d"), "year": value.year}


def _compact(metadata: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in metadata.items() if value not in (None, "", [])}


def _language_tag(value: object) -> str | None:
    """The primary subtag of a language tag, lower-cased: 'en-US' -> 'en'; None if not one."""
    if not isinstance(value, str):
        return None
    tag = re.split(r"[-_]", value.strip(), maxsplit=1)[0].lower()
    return tag if re.fullmatch(r"[a-z]{2,3}", tag) else None


_STOPWORDS = {language: frozenset(words.split()) for language, words in {
    "en": "the and of to is that with for this are was it",
    "de": "der die und das ist nicht mit sich ein eine auf den",
    "fr": "le les et des est une pour dans qui du pas sur",
    "es": "el los las y del por para con una como pero más",
    "it": "il di che è della delle sono gli anche questo nel alla",
    "nl": "het een van niet zijn voor ook maar wordt dat op",
    "pt": "não do dos das em um uma ao são também pelo pela",
}.items()}


_WORD = re.compile(r"\w+")
# ASCII word characters (what `\w` matches in ASCII text) kept, every other byte a space
_ASCII_WORDS_ONLY = bytes(c if chr(c).isascii() and (chr(c).isalnum() or chr(c) == "_")
                          else ord(" ") for c in range(256))


def _word_counts(text: str) -> Counter[str]:
    r"""How often each word (`\w+`) occurs; ASCII text is split in C, not matched word by word."""
    if text.isascii():
        return Counter(text.encode("ascii").translate(_ASCII_WORDS_ONLY).decode("ascii").split())
    return Counter(_WORD.findall(text))


def guess_language(text: str) -> str | None:
    """en, de, fr, es, it, nl or pt by counting stopwords in the first 5,000 characters.

    Only a clear winner counts: at least 5 hits and twice the runner-up's.
    """
    words = _word_counts(text[:5000].lower())
    hits = sorted(((sum(words[w] for w in stop), lang) for lang, stop in _STOPWORDS.items()),
                  reverse=True)
    (best, language), (runner_up, _) = hits[0], hits[1]
    return language if best >= 5 and best >= 2 * runner_up else None
