"""Metrics: what the daemon has done, in Prometheus's text format, served from its own loop.

Off unless `metrics.listen` is set. Every collector lives on the `Metrics` object's own registry,
never prometheus_client's global one, so several daemons in one process (the tests) neither
share nor clash. The endpoint is answered by the daemon's asyncio loop, not by the library's
thread server: an answer to /healthz then proves that the loop itself is turning, which a
thread would go on answering long after the loop had stalled.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from urllib.parse import urlsplit

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)

from daemon import __version__
from daemon.config import MetricsSettings
from daemon.errors import ConfigError
from daemon.logs import get_logger

log = get_logger("dropzone.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes
# a stage's share of a batch takes from a millisecond (hashing a small file) to minutes (a
# large upload, a long PDF): 1-2.5-5 steps per decade, then up to ten minutes
STAGE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 150.0, 300.0, 600.0)
SUCCESS = ("stored", "duplicate")  # the content is in every sink
EXCHANGE_S = 5.0  # a client gets this long for its whole request and our answer
MAX_LINE_BYTES = 8192  # a longer request line or header is a bad request
MAX_HEADERS = 100
TEXT = "text/plain; charset=utf-8"
Ready = Callable[[], tuple[bool, str]]
Answer = tuple[int, str, bytes]  # status, content type, body
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           500: "Internal Server Error", 503: "Service Unavailable"}


class Metrics:
    """One daemon's counters, gauges and histograms, on a registry of its own."""

    def __init__(self) -> None:
        # in the 0.0.4 text format each counter's and histogram's `_created` time is one more
        # gauge series per label set: noise to every scraper (a process-wide switch; nothing
        # else in the daemon uses prometheus_client)
        disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
        self.registry = reg = CollectorRegistry()
        self.files = Counter("dropzone_files", "Files that reached their end, by outcome",
                             ("zone", "outcome"), registry=reg)
        self.bytes = Counter("dropzone_bytes", "Bytes of the files that reached their end",
                             ("zone", "outcome"), registry=reg)
        self.stage_s = Histogram("dropzone_stage_duration_seconds",
                                 "Time a file spent in each stage (its share of its batch)",
                                 ("stage",), buckets=STAGE_BUCKETS_S, registry=reg)
        self.retries = Counter("dropzone_retries", "Retries, by operation and error kind, and "
                               "files rescheduled (file_retry) or waiting out an outage",
                               ("cause",), registry=reg)
        self.queue = Gauge("dropzone_queue_depth", "Files of a zone not yet at their end",
                           ("zone",), registry=reg)
        self.last_success = Gauge("dropzone_last_success_timestamp_seconds",
                                  "When a file of the zone last reached every sink (Unix time)",
                                  ("zone",), registry=reg)
        Info("dropzone", "The running dropzone", registry=reg).info({"version": __version__})

    def file_done(self, zone: str, outcome: str, size_bytes: int,
                  stage_ms: Mapping[str, float]) -> None:
        """Count a file at its end; its stage times come in milliseconds, as the ledger keeps
        them, and go out in seconds, as Prometheus expects."""
        self.files.labels(zone, outcome).inc()
        self.bytes.labels(zone, outcome).inc(max(0, size_bytes))
        for stage, ms in stage_ms.items():
            self.stage_s.labels(stage).observe(max(0.0, ms) / 1000)
        if outcome in SUCCESS:
            self.last_success.labels(zone).set_to_current_time()

    def retried(self, cause: str) -> None:
        self.retries.labels(cause).inc()

    def queue_depth(self, zone: str, files: int) -> None:
        self.queue.labels(zone).set(files)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@asynccontextmanager
async def serve(metrics: Metrics, listen: str, ready: Ready) -> AsyncIterator[None]:
    """Answer /metrics, /healthz and /readyz on `listen` (host:port) until the block ends.
    An address that cannot be used is a configuration error, said plainly, not a traceback."""
    server = await _listen(partial(_exchange, metrics, ready), listen)
    log.info("metrics_listening", address=listen)
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


async def _listen(handler: Handler, listen: str) -> asyncio.Server:
    try:
        host, port = MetricsSettings.split(listen)
        return await asyncio.start_server(handler, host, port, limit=MAX_LINE_BYTES)
    except ValueError as exc:
        raise ConfigError([f"metrics.listen: {exc}"]) from None
    except OSError as exc:  # in use, not an address of this host, a privileged port, no such host
        reason = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise ConfigError([f"metrics.listen: cannot listen on {listen}: {reason}"]) from None


async def _exchange(metrics: Metrics, ready: Ready, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
    """One request, one answer, then the connection closes. Whatever a client sends or fails
    to send, it costs at most EXCHANGE_S and never an exception outside this function."""
    try:
        async with asyncio.timeout(EXCHANGE_S):
            request = await _read_request(reader)
            if request is not None:
                writer.write(_encode(request[0], _answer(metrics, ready, *request)))
                await writer.drain()
            writer.close()
            await writer.wait_closed()
    except Exception as exc:  # a client that stalls, resets or sends garbage: drop it
        log.debug("metrics_client_dropped", error=f"{type(exc).__name__}: {exc}")
    finally:
        writer.transport.abort()  # a no-op after a clean close; else frees the socket now


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    """(method, path) of an HTTP/1.x request, its headers read and ignored (closing with them
    unread would reset the connection under our answer); None when the client sent nothing;
    ("", "") for anything that is not HTTP, answered at once without waiting for more."""
    try:
        line = await reader.readline()
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return ("", "") if line else None
        for _ in range(MAX_HEADERS):
            if not (await reader.readline()).strip():
                break
        return parts[0], urlsplit(parts[1]).path
    except ValueError:  # a line longer than MAX_LINE_BYTES, a target urlsplit refuses
        return "", ""


def _answer(metrics: Metrics, ready: Ready, method: str, path: str) -> Answer:
    """The status, type and body for a request; a failure inside becomes a 500, not a crash."""
    if not method:
        return 400, TEXT, b"bad request\n"
    if path not in ("/metrics", "/healthz", "/readyz"):
        return 404, TEXT, b"not found: try /metrics, /healthz or /readyz\n"
    if method not in ("GET", "HEAD"):
        return 405, TEXT, b"only GET and HEAD\n"
    try:
        return _route(metrics, ready, path)
    except Exception as exc:
        log.warning("metrics_request_failed", path=path, error=f"{type(exc).__name__}: {exc}")
        return 500, TEXT, b"internal error\n"


def _route(metrics: Metrics, ready: Ready, path: str) -> Answer:
    if path == "/metrics":
        return 200, CONTENT_TYPE, metrics.render()
    if path == "/healthz":  # answered at all: the loop is turning
        return 200, TEXT, b"ok\n"
    is_ready, reason = ready()
    return (200 if is_ready else 503), TEXT, f"{reason}\n".encode()


def _encode(method: str, answer: Answer) -> bytes:
    """An HTTP/1.0 response that closes the connection; HEAD gets the headers alone."""
    status, content_type, body = answer
    head = (f"HTTP/1.0 {status} {REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n")
    if status == 405:
        head += "Allow: GET, HEAD\r\n"
    return (head + "\r\n").encode("latin-1") + (b"" if method == "HEAD" else body)

