"""Careful file handling for sources in the zones: versions, safe opens, moves that lose nothing.

A file version is (size, mtime_ns). Sources are opened without following symlinks and without
blocking on FIFOs, and every read checks the version it was asked for, so a file that changes
or is replaced underneath the daemon is noticed instead of half-processed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from daemon.errors import FileVanished

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def version_of(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


def check_version(st: os.stat_result, expected: tuple[int, int]) -> None:
    """Raise FileVanished unless `st` is a regular file of the expected version."""
    if not stat.S_ISREG(st.st_mode):
        raise FileVanished("no longer a regular file", outcome="superseded")
    if version_of(st) != expected:
        raise FileVanished("changed since it was found", outcome="superseded")


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0)
_REPLACED = (errno.ELOOP, errno.ENOTDIR)  # a link where a folder or the file was
BLOCK_BYTES = 1 << 20


def _open_beneath(root: Path, rel: str) -> int:
    """Open `root/rel` for reading without following a symlink at `root` or anywhere below
    it, so a folder or file swapped for a link to elsewhere is refused, never read."""
    *folders, name = Path(rel).parts
    dir_fd = os.open(root, _DIR_FLAGS)
    try:
        for folder in folders:
            inner = os.open(folder, _DIR_FLAGS, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = inner
        return os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class SourceFile:
    """One version of a file in a zone: its zone folder, its path inside it, (size, mtime)."""

    root: Path
    rel: str
    version: tuple[int, int]

    @property
    def path(self) -> Path:
        return self.root / self.rel

    def open(self) -> BinaryIO:
        """The file, opened beneath its zone (no symlink followed, no FIFO waited on), if and
        only if it is still this version; FileVanished otherwise."""
        try:
            fd = _open_beneath(self.root, self.rel)
        except FileNotFoundError:
            raise FileVanished("deleted before it was read", outcome="vanished") from None
        except OSError as exc:
            if exc.errno not in _REPLACED:
                raise
            raise FileVanished("replaced by a symbolic link", outcome="superseded") from None
        handle = os.fdopen(fd, "rb", buffering=0)
        try:
            check_version(os.fstat(fd), self.version)
        except BaseException:
            handle.close()
            raise
        return handle


@contextmanager
def open_version(source: SourceFile) -> Iterator[BinaryIO]:
    """`source` opened for reading; it must still be the same version when reading ends."""
    with source.open() as handle:
        yield handle
        check_version(os.fstat(handle.fileno()), source.version)


def blocks(handle: BinaryIO, size: int, block_bytes: int = BLOCK_BYTES,
           start: int = 0) -> Iterator[bytes]:
    """The bytes `start..size` of an open file in blocks, by positional reads (so one handle
    serves several readers); a file that has grown yields only `size` bytes."""
    offset = start
    while offset < size:
        block = os.pread(handle.fileno(), min(block_bytes, size - offset), offset)
        if not block:
            return
        offset += len(block)
        yield block


def is_version(path: Path, expected: tuple[int, int]) -> bool:
    """True if `path` is still that regular file (not a link, not changed)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and version_of(st) == expected


NAME_MAX_BYTES = 255  # the longest file name most filesystems take


def _fitted(path: Path, n: int, room_bytes: int) -> Path:
    """`name.n.ext` (`name.ext` for n = 0), the name cut at a character boundary so that it and
    `room_bytes` more fit in NAME_MAX_BYTES: a 255-byte name that is taken needs `.1` too."""
    name, ext = os.fsencode(path.stem), os.fsencode(path.suffix)
    if len(ext) > 32:  # not an extension worth keeping whole
        name, ext = name + ext, b""
    tail = (f".{n}".encode() if n else b"") + ext
    cut = max(1, NAME_MAX_BYTES - room_bytes - len(tail))
    while 1 < cut < len(name) and name[cut] & 0xC0 == 0x80:  # not inside a UTF-8 character
        cut -= 1
    return path.with_name(os.fsdecode(name[:cut] + tail))


def free_path(path: Path, room_bytes: int = 0) -> Path:
    """`path`, or `name.1.ext`, `name.2.ext`... : the first that does not exist yet, each cut
    to fit the filesystem with `room_bytes` to spare (for a `.error.json` beside it)."""
    fits = len(os.fsencode(path.name)) + room_bytes <= NAME_MAX_BYTES
    candidate, n = (path if fits else _fitted(path, 0, room_bytes)), 0
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = _fitted(path, n, room_bytes)
    return candidate


def move(source: Path, target: Path) -> Path:
    """Move a file to a free name at `target`, creating folders; returns where it went."""
    target.parent.mkdir(parents=True, exist_ok=True)
    final = free_path(target)
    shutil.move(source, final)
    return final


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `lock_path` (other processes wait for it)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON beside others atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2, ensure_ascii=False, default=str)
        out.write("\n")
    Path(tmp).replace(path)
