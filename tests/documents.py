"""Documents built by hand for tests: real PDFs without a PDF-writing library.

`make_pdf` writes well-formed files; `assemble` numbers any objects and writes the xref table
with the right offsets, so tests can craft malformed or hostile PDFs object by object.
"""

from __future__ import annotations

import zlib

_PAGE = ("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
         "/Resources << /Font << /F1 3 0 R >> >> /Contents {contents} 0 R >>")
_FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"


def make_pdf(pages: list[str], info: dict[str, str] | None = None,
             compress: bool = False) -> bytes:
    """A valid PDF showing each string of `pages` on a page of its own, one line per line.

    `info` fills the document information dictionary, keys without their slash (Title, Author,
    CreationDate: 'D:20210305120000Z'). `compress` stores the page contents FlateDecode'd.
    """
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(), _FONT]
    for i, text in enumerate(pages):
        objects.append(_PAGE.format(contents=5 + 2 * i).encode())
        objects.append(stream(page_content(text), compress))
    trailer = {"Root": "1 0 R"}
    if info:
        objects.append(info_dictionary(info))
        trailer["Info"] = f"{len(objects)} 0 R"
    return assemble(objects, trailer)


def page_content(text: str) -> bytes:
    """A content stream that writes `text` in 12 pt Helvetica, one line per line."""
    shown = " T* ".join(f"{pdf_string(line)} Tj" for line in text.split("\n"))
    return f"BT /F1 12 Tf 14 TL 72 720 Td {shown} ET".encode("latin-1")


def stream(data: bytes, compress: bool = False) -> bytes:
    """A stream object's body, with its /Length (and /Filter when compressed)."""
    if compress:
        data = zlib.compress(data)
    flate = " /Filter /FlateDecode" if compress else ""
    return b"<< /Length %d%s >>\nstream\n%s\nendstream" % (len(data), flate.encode(), data)


def info_dictionary(info: dict[str, str]) -> bytes:
    entries = " ".join(f"/{key} {pdf_string(value)}" for key, value in info.items())
    return f"<< {entries} >>".encode("latin-1")


def pdf_string(value: str) -> str:
    """A PDF string: literal when Latin-1, else hex UTF-16BE with its byte order mark."""
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return "<FEFF" + value.encode("utf-16-be").hex().upper() + ">"
    escaped = value.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return f"({escaped})"


def assemble(objects: list[bytes], trailer: dict[str, str]) -> bytes:
    """A PDF file holding `objects` as objects 1..n, with a correct xref table.

    `trailer` holds the trailer's entries but /Size, keys without their slash: {"Root": "1 0 R"}.
    """
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    entries = " ".join(f"/{key} {value}" for key, value in trailer.items())
    out += f"trailer\n<< /Size {len(objects) + 1} {entries} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def pdf_with_content(content: bytes) -> bytes:
    """A one-page PDF whose page content stream (compressed) is `content`, as given."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>", _FONT,
               _PAGE.format(contents=5).encode(), stream(content, compress=True)]
    return assemble(objects, {"Root": "1 0 R"})


def endless_pdf(pages: int = 500, operators: int = 20_000) -> bytes:
    """~3 KB on disk, yet `pages` pages that all show one content stream of `operators` text
    operators: a parser spends minutes on it, page after page, in little memory, as on a PDF
    crafted to make extraction loop."""
    kids = " ".join(f"{4 + i} 0 R" for i in range(pages))
    shared = 4 + pages  # every page's /Contents
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(), _FONT]
    objects += [_PAGE.format(contents=shared).encode()] * pages
    objects.append(stream(b"BT /F1 12 Tf 72 720 Td " + b"(a) Tj " * operators + b"ET", True))
    return assemble(objects, {"Root": "1 0 R"})


def bomb_pdf(megabytes: int = 60) -> bytes:
    """~60 KB on disk that inflates to one string of `megabytes` MB on its page (under pypdf's
    own 75 MB stream limit): reading it needs several times that much memory."""
    return pdf_with_content(b"BT /F1 12 Tf 72 720 Td (" + b"a" * (megabytes << 20) + b") Tj ET")
