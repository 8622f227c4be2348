"""Object keys: deterministic, built from sanitised parts, always under the prefix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from daemon.errors import PermanentError
from daemon.objectstore import FileStore, extension, object_key, sanitize_name

SHA = "ab" * 32
TEMPLATE = "dropzones/{doc_type}/{sha256}/{name}"


@pytest.mark.parametrize(("name", "expected"), [
    ("report.pdf", "report.pdf"),
    ("my report (final).txt", "my_report_final_.txt"),
    ("résumé.md", "résumé.md"),
    ("line\nbreak\r\t.txt", "line_break_.txt"),
    ("../../etc/passwd", "etc_passwd"),
    ("..", "file"),
    (".hidden", "hidden"),
    ("a/b\\c.txt", "a_b_c.txt"),
    ("\x00\x01\x7f", "file"),
    ("日本語のファイル.txt", "日本語のファイル.txt"),
])
def test_sanitize_name(name: str, expected: str) -> None:
    """Separators, controls, spaces and leading dots never reach a key."""
    assert sanitize_name(name) == expected


def test_long_names_are_cut_keeping_the_extension() -> None:
    """A 1,000-byte name becomes at most 200 UTF-8 bytes and keeps `.txt`."""
    name = "é" * 600 + ".txt"
    safe = sanitize_name(name)
    assert len(safe.encode()) <= 200
    assert safe.endswith(".txt")
    safe.encode("utf-8").decode("utf-8")  # still valid UTF-8 after the cut


def test_undecodable_names_are_sanitised() -> None:
    """Bytes that are not UTF-8 (surrogate-escaped by the OS) become underscores."""
    name = b"caf\xe9.txt".decode("utf-8", "surrogateescape")
    assert sanitize_name(name) == "caf_.txt"


def test_object_key_is_deterministic_and_confined() -> None:
    """Same inputs give the same key; hostile names cannot climb out of the template."""
    key = object_key(TEMPLATE, doc_type="document", sha256=SHA, name="../../x y.txt", zone="z")
    assert key == f"dropzones/document/{SHA}/x_y.txt"
    assert key == object_key(TEMPLATE, doc_type="document", sha256=SHA, name="../../x y.txt",
                             zone="z")
    assert ".." not in key.split("/")


def test_template_fields() -> None:
    """zone, ext and doc_type are available to templates."""
    key = object_key("{zone}/{ext}/{doc_type}/{sha256}", doc_type="paper", sha256=SHA,
                     name="A.PDF", zone="inbox")
    assert key == f"inbox/pdf/paper/{SHA}"
    assert extension("noext") == ""


def test_found_time_renders_in_utc() -> None:
    """`{found:...}` renders the given found time in UTC, whatever zone the time came in."""
    found = datetime(2026, 12, 5, 14, 1, 38, 250_000, tzinfo=timezone(timedelta(hours=1)))
    key = object_key("dropzones/{found:%Y%m%d_%H%M%S}/{doc_type}/{sha256}/{name}",
                     doc_type="report", sha256=SHA, name="q3 .md", zone="z", found=found)
    assert key == f"dropzones/20261205_130138/report/{SHA}/q3_.md"
    assert object_key("{found:%Y/%m/%d}/{found}/{found:%f}/{sha256}", doc_type="d", sha256=SHA,
                      name="n", zone="z", found=found.astimezone(UTC)) == \
        f"2026/12/05/20261205T130138Z/250000/{SHA}"


def test_found_time_is_needed_when_the_template_uses_it() -> None:
    """Without a found time a `{found}` template fails plainly; other templates ignore it."""
    with pytest.raises(PermanentError, match="no found time"):
        object_key("{found:%Y}/{sha256}", doc_type="d", sha256=SHA, name="n", zone="z")
    assert object_key(TEMPLATE, doc_type="d", sha256=SHA, name="n", zone="z") == \
        f"dropzones/d/{SHA}/n"


def test_file_store_refuses_keys_that_escape(tmp_path: Path) -> None:
    """The file store never writes outside its root, whatever key it is handed."""
    store = FileStore(tmp_path / "objects")
    with pytest.raises(PermanentError):
        store.url("../outside")
