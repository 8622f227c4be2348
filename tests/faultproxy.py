"""A fault-injecting TCP proxy for tests: put it between the daemon and S3, Postgres or MLflow.

Modes, switchable while connections are open:
  pass     forward bytes both ways
  refuse   stop listening (connection refused); open connections are reset
  reset    accept, then reset at once; open connections are reset
  stall    accept and read, forward nothing (the peer times out)
  blackhole  like stall, but the connections open meanwhile stay stalled for ever, after the
           proxy passes again (a peer that froze, a NAT that forgot them): only new ones pass
  slow     forward, `delay_s` per chunk
  http503  answer each new HTTP connection with `503 SlowDown` (S3's throttling reply), for
           `count` connections, then pass
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any

SLOWDOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s")
SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                 b"<Message>Please reduce your request rate.</Message></Error>")


class FaultProxy:
    """Listens on 127.0.0.1:<port>; forwards to a TCP (host, port) or a unix socket path."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, unix_path: str | None = None):
        self.target = (host, port)
        self.unix_path = unix_path
        self.mode = "pass"
        self.delay_s = 0.05
        self.count = 0
        self.connections = 0  # accepted, whatever the mode
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._frozen: set[asyncio.StreamWriter] = set()  # blackholed for good
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def start(self) -> FaultProxy:
        self._thread.start()
        self._run(self._listen())
        return self

    def stop(self) -> None:
        self._run(self._set("refuse"))
        self._run(self._cancel_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _cancel_all(self) -> None:
        """End the connections still piping (a stalled one would never end by itself)."""
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def set(self, mode: str, **options: Any) -> None:
        """Switch mode (see the module docstring); `delay_s=`, `count=` tune slow and http503."""
        self._run(self._set(mode, **options))

    async def _set(self, mode: str, delay_s: float | None = None, count: int = 0) -> None:
        self.delay_s = self.delay_s if delay_s is None else delay_s
        self.count = count
        self.mode = mode
        if mode == "blackhole":
            self._frozen |= self._writers
        if mode in ("refuse", "reset"):
            for writer in list(self._writers):
                _reset(writer)
        if mode == "refuse" and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        elif mode != "refuse" and self._server is None:
            await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:  # stop(): end quietly (asyncio logs a cancelled handler)
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "reset":
            _reset(writer)
        elif self.mode == "http503" and self.count > 0:
            self.count -= 1
            await _answer_503(reader, writer)
        else:
            await self._forward(reader, writer)

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.unix_path:
            return await asyncio.open_unix_connection(self.unix_path)
        return await asyncio.open_connection(*self.target)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await self._open_upstream()
        self._writers.add(up_writer)
        if self.mode == "blackhole":
            self._frozen |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers.discard(up_writer)
            with contextlib.suppress(Exception):
                up_writer.close()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            while (self.mode in ("stall", "blackhole") or sink in self._frozen) \
                    and not sink.is_closing():  # noqa: ASYNC110 - a test tool; polling is plain
                await asyncio.sleep(0.05)
            if self.mode == "slow":
                await asyncio.sleep(self.delay_s)
            sink.write(data)
            await sink.drain()
        with contextlib.suppress(Exception):
            sink.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a crashed or restarted server does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _answer_503(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read one HTTP request head (and its body), answer 503 SlowDown, close."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:  # the body, unless the client waits for "100 Continue" first
        with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError):
            await asyncio.wait_for(reader.readexactly(length), 1.0)
    writer.write(SLOWDOWN % (len(SLOWDOWN_BODY), SLOWDOWN_BODY))
    await writer.drain()
