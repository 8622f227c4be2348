"""sd_notify, spoken directly: one datagram per message to $NOTIFY_SOCKET (no C library).

The daemon takes NOTIFY_SOCKET and WATCHDOG_USEC out of its environment when it starts, as
sd_notify(3) advises: its children (worker processes, an embedded Postgres) must not talk to
systemd in its name. Outside systemd (no NOTIFY_SOCKET) every message is a no-op.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass

STATUS_MAX_CHARS = 200  # systemctl status shows one line; keep it readable


@dataclass(frozen=True)
class Notifier:
    """Where to send notifications, and how often systemd wants a watchdog ping."""

    address: str | None = None
    watchdog_s: float | None = None

    @classmethod
    def from_environment(cls) -> Notifier:
        """Take (and remove) systemd's variables from this process's environment."""
        address = os.environ.pop("NOTIFY_SOCKET", None) or None
        usec = os.environ.pop("WATCHDOG_USEC", "")
        pid = os.environ.pop("WATCHDOG_PID", "")
        for_us = usec.isdigit() and int(usec) > 0 and pid in ("", str(os.getpid()))
        return cls(address, int(usec) / 1e6 if for_us else None)

    def send(self, *lines: str) -> bool:
        """Send `READY=1`, `STATUS=...`, ...; True if a socket took it."""
        if not self.address:
            return False
        address = self.address
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto("\n".join(lines).encode(), address)
            except OSError:
                return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", status_line(status))

    def status(self, status: str) -> bool:
        return self.send(status_line(status))

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", status_line(status))

    def reloading(self) -> bool:
        """RELOADING=1 with the monotonic time systemd ≥ 253 wants beside it."""
        now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={now_us}",
                         status_line("reloading the configuration"))

    async def keep_alive(self) -> None:
        """Ping the watchdog at half its period from the event loop itself: a loop that is
        stuck stops pinging, and systemd restarts the daemon."""
        if self.watchdog_s is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_s / 2)


def status_line(text: str) -> str:
    return "STATUS=" + " ".join(text.split())[:STATUS_MAX_CHARS]
