"""Free names for files moved to done/ or quarantine: never longer than the filesystem takes."""

from __future__ import annotations

import os
from pathlib import Path

from daemon.files import NAME_MAX_BYTES, free_path


def test_a_taken_255_byte_name_is_cut_to_fit_with_its_number(tmp_path: Path) -> None:
    """`name.1.txt` of a 255-byte name is cut to 255 bytes, keeping `.1.txt`."""
    name = "n" * 251 + ".txt"
    (tmp_path / name).write_text("taken")
    free = free_path(tmp_path / name)
    assert free.name == "n" * 249 + ".1.txt"
    free.write_text("fits")


def test_room_is_kept_for_a_report_beside_it(tmp_path: Path) -> None:
    """With room for `.error.json`, even a free 255-byte name is cut so the report fits."""
    free = free_path(tmp_path / ("n" * 251 + ".txt"), len(".error.json"))
    assert len(os.fsencode(free.name)) == NAME_MAX_BYTES - len(".error.json")
    Path(f"{free}.error.json").write_text("{}")


def test_a_cut_never_splits_a_character(tmp_path: Path) -> None:
    """A name of two-byte characters is cut between characters; bytes that are not UTF-8 are
    cut as bytes and kept exactly."""
    accented = "é" * 125 + ".txt"  # 254 bytes
    (tmp_path / accented).write_text("taken")
    free = free_path(tmp_path / accented)
    assert free.name == "é" * 124 + ".1.txt"
    latin1 = os.fsdecode(b"\xe9" * 251 + b".txt")
    (tmp_path / latin1).write_text("taken")
    assert os.fsencode(free_path(tmp_path / latin1).name) == b"\xe9" * 249 + b".1.txt"


def test_short_names_are_unchanged(tmp_path: Path) -> None:
    """Short names keep the `name.N.ext` form."""
    (tmp_path / "a.txt").write_text("taken")
    assert free_path(tmp_path / "a.txt").name == "a.1.txt"
    assert free_path(tmp_path / "b.txt").name == "b.txt"
