"""The repository explains itself: every link in its Markdown resolves inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import REPO

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), REPO / "bench" / "README.md"])


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", text, re.M)}


def broken(doc: Path, root: Path = REPO) -> list[str]:
    problems = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: outside the repository
            continue
        name, _, anchor = target.partition("#")
        path = (doc.parent / name).resolve() if name else doc
        if not path.exists() or not path.is_relative_to(root):
            problems.append(f"{target}: no such file in the repository")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"{target}: no heading #{anchor}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_link_resolves(doc: Path) -> None:
    """Each relative link names a file of the repository, and each #anchor one of its headings."""
    assert broken(doc) == []


def test_the_checker_sees_a_broken_link(tmp_path: Path) -> None:
    """A link to a missing file or heading is reported."""
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n[a](missing.md) [b](#title) [c](#nope) [d](https://x.y/z) "
                   "[e](../outside.md)\n")
    (tmp_path.parent / "outside.md").write_text("# Outside\n")
    assert broken(doc, tmp_path.resolve()) == [
        "missing.md: no such file in the repository", "#nope: no heading #nope",
        "../outside.md: no such file in the repository"]
