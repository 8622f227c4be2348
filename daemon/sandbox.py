"""Sandbox: documents in formats that need a parser (PDF, DOCX) are read in a throwaway process.

A hostile or broken file (a decompression bomb, a page tree that loops, a parser bug) can then
cost one process and its limits, never the daemon: the process gets a memory limit (address
space beyond what it started with) and a wall-clock deadline, after which it is killed. Both
end in a `PermanentError` naming the limit, so the file is quarantined with that reason.
The process forks from the daemon's fork server (`daemon.workers`), so it starts in
milliseconds, and it dies with the daemon.
"""

from __future__ import annotations

import asyncio
import resource
import threading
import time
import weakref
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from daemon import formats, workers
from daemon.config import ExtractionSettings
from daemon.errors import DaemonError, FileVanished, PermanentError
from daemon.files import SourceFile, open_version
from daemon.formats import Extracted


class ExtractionLimit(PermanentError):
    """The document hit the time or memory limit of its extraction process."""


_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = \
    weakref.WeakKeyDictionary()
POLL_S = 0.25  # how soon a cancelled extraction lets its thread go


async def extract(source: SourceFile, kind: str, limits: ExtractionSettings) -> Extracted:
    """The text and metadata of one document, read in a sandboxed process; at most
    `limits.processes` at once, so a batch of PDFs cannot take all memory. Cancelling (a
    drain) kills the process within POLL_S rather than letting it run to its deadline."""
    cancelled = threading.Event()
    async with _slots(limits.processes):
        try:
            return await asyncio.to_thread(_run, source, kind, limits, cancelled)
        except asyncio.CancelledError:
            cancelled.set()
            raise


def _slots(count: int) -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    if loop not in _SLOTS:
        _SLOTS[loop] = asyncio.Semaphore(count)
    return _SLOTS[loop]


def _run(source: SourceFile, kind: str, limits: ExtractionSettings,
         cancelled: threading.Event) -> Extracted:
    context = workers.context()
    reader, writer = context.Pipe(duplex=False)
    args = (writer, source, kind, limits, *workers.parent_state())
    process = context.Process(target=_child, args=args, name=f"extract-{kind}", daemon=True)
    process.start()
    writer.close()
    try:
        if not _wait(reader, limits.timeout_s, cancelled):
            raise ExtractionLimit(f"{kind}: extraction took longer than {limits.timeout_s:g} s")
        return _answer(reader, kind, limits, process)
    finally:
        process.kill()
        process.join()
        reader.close()


def _answer(reader: Connection, kind: str, limits: ExtractionSettings,
            process: BaseProcess) -> Extracted:
    """What the process sent, or the limit it ran into."""
    try:
        status, payload = reader.recv()
    except EOFError:
        process.join(5)
        raise ExtractionLimit(f"{kind}: the extraction process died (exit code "
                              f"{process.exitcode}), probably out of memory") from None
    if status == "ok":
        text, metadata = payload
        return Extracted(text, metadata)
    if status == "vanished":
        raise FileVanished(*payload)
    raise (ExtractionLimit if status == "memory" else PermanentError)(payload)


def _wait(reader: Connection, timeout_s: float, cancelled: threading.Event) -> bool:
    """True once the process has answered (or died); False at the deadline or if cancelled."""
    deadline = time.monotonic() + timeout_s
    while not cancelled.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if reader.poll(min(POLL_S, left)):
            return True
    return False


def _child(writer: Connection, source: SourceFile, kind: str, limits: ExtractionSettings,
           daemon_pid: int, log_state: Any) -> None:
    workers.setup(daemon_pid, log_state)
    _limit_memory(limits.memory)
    try:
        with open_version(source) as handle:  # the version uploaded, beneath its zone
            result = formats.extract(Path(f"/proc/self/fd/{handle.fileno()}"), kind,
                                     limits.max_chars)
        writer.send(("ok", (result.text, result.metadata)))
    except FileVanished as exc:
        writer.send(("vanished", (str(exc), exc.outcome)))
    except MemoryError:
        writer.send(("memory", f"{kind}: extraction needed more than "
                               f"{limits.memory / 2**20:.0f} MiB of memory"))
    except Exception as exc:
        writer.send(("error", _one_line(kind, exc)))


def _one_line(kind: str, exc: BaseException) -> str:
    if isinstance(exc, DaemonError):
        return str(exc)
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    return f"{kind}: cannot read: {type(exc).__name__}: {text}"


def _limit_memory(extra_bytes: int) -> None:
    """Address space: what the process has now (inherited mappings) plus `extra_bytes`."""
    with open("/proc/self/statm") as statm:
        size_bytes = int(statm.read().split()[0]) * resource.getpagesize()
    limit = size_bytes + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
