"""The extraction sandbox: documents read in a process of their own, within limits."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from pathlib import Path

import pytest

from daemon import sandbox
from daemon.config import ExtractionSettings
from daemon.errors import FileVanished, PermanentError
from daemon.files import SourceFile, version_of
from tests.documents import bomb_pdf, endless_pdf, make_pdf


def write(path: Path, data: bytes) -> SourceFile:
    path.write_bytes(data)
    return SourceFile(path.parent, path.name, version_of(path.stat()))


async def test_a_pdf_is_read_in_the_sandbox(tmp_path: Path) -> None:
    """Text and metadata come back from the sandboxed process."""
    source = write(tmp_path / "a.pdf", make_pdf(["Hello sandbox"], {"Title": "T"}))
    result = await sandbox.extract(source, "pdf", ExtractionSettings())
    assert "Hello sandbox" in result.text
    assert result.metadata["title"] == "T" and result.metadata["pages"] == 1


async def test_an_endless_pdf_is_stopped_at_the_deadline(tmp_path: Path) -> None:
    """A PDF that keeps the parser busy is killed at timeout_s, with that reason."""
    source = write(tmp_path / "loop.pdf", endless_pdf())
    started = time.monotonic()
    with pytest.raises(sandbox.ExtractionLimit, match="longer than 2 s"):
        await sandbox.extract(source, "pdf", ExtractionSettings(timeout_s=2))
    assert time.monotonic() - started < 30  # killed, not waited out (it takes minutes)


async def test_a_pdf_bomb_hits_the_memory_limit(tmp_path: Path) -> None:
    """A PDF that inflates far beyond the memory limit ends in a permanent error naming it."""
    source = write(tmp_path / "bomb.pdf", bomb_pdf())
    limits = ExtractionSettings(memory=64 * 2**20, timeout_s=120)
    with pytest.raises(PermanentError, match="memory"):
        await sandbox.extract(source, "pdf", limits)


async def test_a_corrupt_docx_is_a_permanent_error(tmp_path: Path) -> None:
    """A parser's complaint about a broken file comes back as one line."""
    source = write(tmp_path / "x.docx", b"not a zip at all")
    with pytest.raises(PermanentError, match=r"^docx: ") as caught:
        await sandbox.extract(source, "docx", ExtractionSettings())
    assert "\n" not in str(caught.value)


async def test_a_changed_file_is_not_read(tmp_path: Path) -> None:
    """The sandbox reads only the version that was uploaded."""
    source = write(tmp_path / "a.pdf", make_pdf(["one"]))
    source.path.write_bytes(make_pdf(["two, longer"]))
    with pytest.raises(FileVanished):
        await sandbox.extract(source, "pdf", ExtractionSettings())


async def test_a_cancelled_extraction_kills_its_process_at_once(tmp_path: Path) -> None:
    """A drain cancels the wait; the process is gone long before its deadline."""
    source = write(tmp_path / "loop.pdf", endless_pdf())
    task = asyncio.create_task(sandbox.extract(source, "pdf",
                                               ExtractionSettings(timeout_s=300)))
    await asyncio.sleep(1)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(asyncio.to_thread(_no_extraction_process), 60)
    assert time.monotonic() - started < 60


def _no_extraction_process() -> None:
    while any(p.name.startswith("extract-") for p in multiprocessing.active_children()):
        time.sleep(0.1)


async def test_extractions_wait_for_a_free_process(tmp_path: Path) -> None:
    """With processes: 1, two slow PDFs are read one after the other, not together."""
    one = write(tmp_path / "a.pdf", endless_pdf())
    two = write(tmp_path / "b.pdf", endless_pdf())
    limits = ExtractionSettings(timeout_s=2, processes=1)
    started = time.monotonic()
    results = await asyncio.gather(sandbox.extract(one, "pdf", limits),
                                   sandbox.extract(two, "pdf", limits),
                                   return_exceptions=True)
    assert all(isinstance(r, sandbox.ExtractionLimit) for r in results)
    assert time.monotonic() - started >= 4  # 2 s each, in turn
