"""Files in zones: free names for files moved to done/ or quarantine (never longer than the
filesystem takes); sources opened beneath their zone only; positional block reads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.errors import FileVanished
from daemon.files import NAME_MAX_BYTES, SourceFile, blocks, free_path, open_version, version_of


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


def _source(root: Path, rel: str) -> SourceFile:
    return SourceFile(root, rel, version_of((root / rel).lstat()))


def test_a_source_opens_beneath_its_zone(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_bytes(b"mine")
    with open_version(_source(tmp_path, "sub/a.txt")) as handle:
        assert handle.read() == b"mine"


def test_a_folder_swapped_for_a_link_is_not_followed(tmp_path: Path) -> None:
    """A folder in the zone replaced by a link to a folder outside: the file behind it is
    never opened, even with the same name and version."""
    zone, outside = tmp_path / "zone", tmp_path / "outside"
    (zone / "sub").mkdir(parents=True)
    outside.mkdir()
    (zone / "sub" / "a.txt").write_bytes(b"mine")
    source = _source(zone, "sub/a.txt")
    (zone / "sub" / "a.txt").replace(outside / "a.txt")  # same inode, same version
    (zone / "sub").rmdir()
    (zone / "sub").symlink_to(outside)
    with pytest.raises(FileVanished, match="symbolic link") as caught:
        source.open()
    assert caught.value.outcome == "superseded"


def test_a_file_swapped_for_a_link_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"mine")
    source = _source(tmp_path, "a.txt")
    (tmp_path / "secret").write_bytes(b"not yours")
    (tmp_path / "a.txt").unlink()
    (tmp_path / "a.txt").symlink_to(tmp_path / "secret")
    with pytest.raises(FileVanished, match="symbolic link"):
        source.open()


def test_a_zone_swapped_for_a_link_is_not_followed(tmp_path: Path) -> None:
    zone, elsewhere = tmp_path / "zone", tmp_path / "elsewhere"
    zone.mkdir()
    (zone / "a.txt").write_bytes(b"mine")
    source = _source(zone, "a.txt")
    zone.rename(elsewhere)
    zone.symlink_to(elsewhere)
    with pytest.raises(FileVanished, match="symbolic link"):
        source.open()


def test_blocks_read_by_position_up_to_the_size_given(tmp_path: Path) -> None:
    """Positional reads: two readers of one handle do not disturb each other, and bytes
    appended after the version was taken are not read."""
    (tmp_path / "a").write_bytes(b"0123456789")
    with open(tmp_path / "a", "rb") as handle:
        first = blocks(handle, 10, block_bytes=4)
        assert next(first) == b"0123"
        assert b"".join(blocks(handle, 6, block_bytes=4)) == b"012345"
        assert b"".join(first) == b"456789"
        assert b"".join(blocks(handle, 20, start=8)) == b"89"
