"""sd_notify spoken directly: what is sent where, and a watchdog that only a live loop feeds."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.systemd import Notifier, status_line


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    yield sock, str(tmp_path / "notify")
    sock.close()


def test_takes_its_variables_out_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """NOTIFY_SOCKET and WATCHDOG_* are removed, so no child process speaks for the daemon."""
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/x")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier.from_environment()
    assert notifier == Notifier("/run/x", 30.0)
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)


def test_a_watchdog_meant_for_another_process_is_ignored(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """WATCHDOG_PID naming another process means no pings from this one."""
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert Notifier.from_environment().watchdog_s is None


def test_outside_systemd_nothing_is_sent() -> None:
    """Without NOTIFY_SOCKET every message is a no-op."""
    assert Notifier().ready("x") is False


def test_messages_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    """READY=1 and its STATUS arrive as one datagram; RELOADING=1 carries MONOTONIC_USEC."""
    sock, path = listener
    notifier = Notifier(path)
    assert notifier.ready("watching\n 3 zones")
    assert sock.recv(4096).decode().split("\n") == ["READY=1", "STATUS=watching 3 zones"]
    notifier.reloading()
    lines = sock.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
    assert abs(int(lines[1].split("=")[1]) / 1e6 - time.monotonic()) < 5


def test_abstract_socket_addresses_work() -> None:
    """An address starting with @ is in the abstract namespace."""
    name = f"dz-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert Notifier("@" + name).stopping("draining")
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=draining"


def test_status_lines_are_one_short_line() -> None:
    """A long, multi-line status is folded to one line of at most 200 characters."""
    line = status_line("a\nb " + "x" * 500)
    assert line.startswith("STATUS=a b ") and len(line) == len("STATUS=") + 200


async def test_a_stuck_loop_stops_the_watchdog_pings(
        listener: tuple[socket.socket, str]) -> None:
    """Pings come every half period from the event loop; while the loop is blocked none come,
    which is what lets systemd restart a daemon whose loop is stuck."""
    sock, path = listener
    sock.setblocking(False)
    pinger = asyncio.create_task(Notifier(path, watchdog_s=0.2).keep_alive())
    arrivals = await collect(sock, 0.5)
    time.sleep(0.8)  # noqa: ASYNC251 - the point: the loop is stuck, no task runs
    arrivals += await collect(sock, 0.5)
    pinger.cancel()
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) >= 4 and max(gaps) >= 0.7 and min(gaps) < 0.5


async def collect(sock: socket.socket, seconds: float) -> list[float]:
    """Arrival times of the WATCHDOG=1 datagrams read over `seconds` of a running loop."""
    arrivals, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(0.01)
        try:
            while sock.recv(64) == b"WATCHDOG=1":
                arrivals.append(time.monotonic())
        except BlockingIOError:
            pass
    return arrivals
