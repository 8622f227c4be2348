"""Folding: while a dependency is down, its repeated warnings become one line a minute."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from daemon import logs
from daemon.errors import TransientError
from daemon.retry import Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock()
    monkeypatch.setattr("daemon.logs.time.monotonic", fake)
    yield fake
    for name in ("mlflow", "objects"):
        logs.outage_ended(name)


def capture() -> io.StringIO:
    stream = io.StringIO()
    logs.configure("info", "json", stream)
    return stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_warnings_about_a_down_dependency_fold_into_a_summary_a_minute(clock: Clock) -> None:
    """Warnings naming a down dependency are counted, not written, and one summary with the
    count goes out a minute later; info lines and other dependencies' lines pass."""
    stream, log = capture(), logs.get_logger("t")
    logs.outage_began("mlflow")
    for _ in range(30):
        clock.now += 1
        log.warning("retrying", dependency="mlflow", error="refused")
    log.info("progress", dependency="mlflow")
    log.warning("retrying", dependency="objects", error="slow")
    with logs.about("mlflow"):
        log.warning("not_ready", error="refused")
    assert [line["event"] for line in lines(stream)] == ["progress", "retrying"]
    clock.now += logs.SUMMARY_EVERY_S
    log.warning("tracking_failed", dependency="mlflow", error="still refused")
    summary = lines(stream)[-1]
    assert summary["event"] == "dependency_still_down" and summary["suppressed"] == 32
    assert summary["last_event"] == "tracking_failed" and summary["error"] == "still refused"
    assert summary["down_s"] == 90


def test_a_breaker_folds_from_opening_to_closing_and_counts_what_it_folded(clock: Clock) -> None:
    """One line when the breaker opens, none for the warnings meanwhile, one when it closes
    saying how many were folded; then lines pass again."""
    stream, log = capture(), logs.get_logger("t")
    breaker = Breaker("mlflow", threshold=1, cooldown_s=0.0)
    breaker.failed(TransientError("mlflow: refused"))
    for _ in range(5):
        log.warning("retrying", dependency="mlflow")
    breaker.failed(TransientError("mlflow: refused again"))  # already open: no new line
    breaker.succeeded()
    log.warning("retrying", dependency="mlflow")
    events = [(line["event"], line.get("folded")) for line in lines(stream)]
    assert events == [("dependency_down", None), ("dependency_recovered", 5), ("retrying", None)]


def test_a_breaker_tells_its_listener_of_each_change_only(clock: Clock) -> None:
    """The listener hears of opening, of closing and of a switch to refusing, not of every
    call; `changed_at` moves when it opens and closes."""
    from daemon.errors import Misconfigured

    heard: list[bool] = []
    breaker = Breaker("objects", threshold=2, cooldown_s=0.0, max_cooldown_s=0.0)
    breaker.listener = lambda b: heard.append(b.is_open)
    breaker.succeeded()
    breaker.failed(TransientError("objects: slow"))
    assert heard == []
    breaker.failed(TransientError("objects: slow"))
    opened_at = breaker.changed_at
    breaker.failed(TransientError("objects: slow"))
    breaker.failed(Misconfigured("objects: AccessDenied"))
    assert breaker.changed_at == opened_at
    breaker.succeeded()
    breaker.succeeded()
    assert heard == [True, True, False]
    assert breaker.reason == "objects: AccessDenied"  # the last error, kept for `status`
