"""The metrics endpoint over real HTTP: what it answers, and that no client can break it."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon import __version__, metrics
from daemon.errors import ConfigError
from daemon.metrics import Metrics, serve
from tests.helpers import free_port


@dataclass
class Endpoint:
    """A running endpoint: its metrics, its address and the readiness it reports."""

    metrics: Metrics
    port: int
    ready: tuple[bool, str] = (False, "starting")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    found = Endpoint(Metrics(), free_port())
    async with serve(found.metrics, f"127.0.0.1:{found.port}", lambda: found.ready):
        yield found


async def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one request, made by urllib in a thread (the server is
    answered by this test's own loop, so the client must not block it)."""
    def fetch() -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(url, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()
    return await asyncio.to_thread(fetch)


async def raw(port: int, data: bytes) -> bytes:
    """Send bytes as they are, read whatever comes back until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def test_metrics_are_served_in_the_text_format(endpoint: Endpoint) -> None:
    """GET /metrics is 200, typed version 0.0.4, and parses into the daemon's series."""
    endpoint.metrics.file_done("docs", "stored", 10, {"upload": 20.0})
    endpoint.metrics.retried("put_timeout")
    status, headers, body = await get(f"{endpoint.base}/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert {"dropzone_files", "dropzone_bytes", "dropzone_stage_duration_seconds",
            "dropzone_retries", "dropzone_queue_depth", "dropzone_last_success_timestamp_seconds",
            "dropzone_info"} <= set(families)
    assert not any(name.endswith("_created") for name in families)
    files = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for s in families["dropzone_files"].samples}
    assert files[("dropzone_files_total", (("outcome", "stored"), ("zone", "docs")))] == 1
    [info] = families["dropzone_info"].samples
    assert info.labels == {"version": __version__}


async def test_healthz_answers_while_the_loop_runs(endpoint: Endpoint) -> None:
    """GET /healthz is 200 ok, and the connection closes after the answer."""
    status, headers, body = await get(f"{endpoint.base}/healthz")
    assert (status, body, headers["Connection"]) == (200, b"ok\n", "close")


async def test_readyz_follows_the_ready_callable(endpoint: Endpoint) -> None:
    """/readyz is 503 with the reason until ready() says so, then 200."""
    status, _, body = await get(f"{endpoint.base}/readyz")
    assert (status, body) == (503, b"starting\n")
    endpoint.ready = (True, "ready")
    status, _, body = await get(f"{endpoint.base}/readyz")
    assert (status, body) == (200, b"ready\n")
    endpoint.ready = (False, "postgres down for 12 s")
    assert (await get(f"{endpoint.base}/readyz"))[0] == 503


async def test_a_failing_ready_callable_is_a_500_not_a_crash() -> None:
    """A readiness check that raises answers 500, and the server goes on."""
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    port = free_port()
    async with serve(Metrics(), f"127.0.0.1:{port}", broken):
        assert (await get(f"http://127.0.0.1:{port}/readyz"))[0] == 500
        assert (await get(f"http://127.0.0.1:{port}/healthz"))[0] == 200


async def test_other_paths_and_methods(endpoint: Endpoint) -> None:
    """An unknown path is 404, POST is 405, HEAD gets the headers without the body."""
    assert (await get(f"{endpoint.base}/nope"))[0] == 404
    assert (await get(f"{endpoint.base}/"))[0] == 404
    status, headers, _ = await get(f"{endpoint.base}/metrics", method="POST")
    assert (status, headers["Allow"]) == (405, "GET, HEAD")
    status, headers, body = await get(f"{endpoint.base}/metrics?x=1", method="HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["Content-Length"]) > 0


@pytest.mark.parametrize("request_bytes", [
    b"\x00\xff\xfe garbage\r\n\r\n",
    b"GET /metrics\r\n\r\n",  # HTTP/0.9: no version
    b"GET /metrics SPDY/3\r\n\r\n",
    b"GET " + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nX-Long: " + b"b" * 20_000 + b"\r\n\r\n",
    b"\r\n",
])
async def test_bad_requests_get_400_and_the_server_goes_on(endpoint: Endpoint,
                                                           request_bytes: bytes) -> None:
    """Garbage, a missing version or an overlong line is answered 400; /healthz still answers."""
    assert (await raw(endpoint.port, request_bytes)).startswith(b"HTTP/1.0 400 Bad Request\r\n")
    assert (await get(f"{endpoint.base}/healthz"))[0] == 200


async def test_clients_that_leave_or_stall_cost_nothing(endpoint: Endpoint,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that closes at once gets nothing; one that stalls is cut off after the timeout;
    neither stops others being answered."""
    monkeypatch.setattr(metrics, "EXCHANGE_S", 0.3)
    assert await raw(endpoint.port, b"") == b""
    reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
    writer.write(b"GET /metrics HTTP/1.1\r\n")  # and never the blank line
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert (await get(f"{endpoint.base}/healthz"))[0] == 200


async def test_many_clients_at_once(endpoint: Endpoint) -> None:
    """Twenty scrapes at once are all answered."""
    answers = await asyncio.gather(*(get(f"{endpoint.base}/metrics") for _ in range(20)))
    assert {status for status, _, _ in answers} == {200}


async def test_a_port_in_use_is_a_config_error() -> None:
    """Another listener on the port makes serve raise ConfigError saying so."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            async with serve(Metrics(), f"127.0.0.1:{port}", lambda: (True, "ready")):
                pass
    assert caught.value.problems == [
        f"metrics.listen: cannot listen on 127.0.0.1:{port}: already in use"]


async def test_a_bad_address_is_a_config_error() -> None:
    """An address serve cannot parse or bind is refused as configuration."""
    with pytest.raises(ConfigError, match=r"metrics\.listen: port '0'"):
        async with serve(Metrics(), "127.0.0.1:0", lambda: (True, "ready")):
            pass
    with pytest.raises(ConfigError, match=r"metrics\.listen: cannot listen on 192\.0\.2\.1"):
        async with serve(Metrics(), f"192.0.2.1:{free_port()}", lambda: (True, "ready")):
            pass


async def test_the_port_is_closed_when_the_block_ends() -> None:
    """After the block the address refuses connections (and can be used again)."""
    port = free_port()
    async with serve(Metrics(), f"127.0.0.1:{port}", lambda: (True, "ready")):
        assert (await get(f"http://127.0.0.1:{port}/healthz"))[0] == 200
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    async with serve(Metrics(), f"127.0.0.1:{port}", lambda: (True, "ready")):
        pass
