"""The MLflow process's start-up (MLflow's import, the store opened) is not counted against a
call's deadline. A thread pool stands in for the MLflow process (our timing logic only)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from daemon import tracking
from daemon.config import MlflowSettings
from daemon.errors import TransientError
from daemon.tracking import Tracking


def slow_tracking(start_s: float, timeout_s: float) -> Tracking:
    """A Tracking whose process takes `start_s` to start, with calls limited to `timeout_s`."""
    fake = Tracking.__new__(Tracking)
    fake.settings = MlflowSettings(tracking_uri="sqlite:///unused.db", timeout_s=timeout_s)
    fake.generation = 1
    fake._executor = ThreadPoolExecutor(1)  # type: ignore[assignment]
    fake.warmup = fake._executor.submit(time.sleep, start_s)
    return fake


def run_here(fn: Any) -> Any:
    return fn(None, "0")


async def test_a_slow_start_is_not_counted_against_the_first_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "_run", run_here)
    fake = slow_tracking(start_s=1.5, timeout_s=0.5)
    try:
        assert await fake.call(lambda client, experiment: experiment) == "0"
    finally:
        fake._executor.shutdown()


async def test_a_call_that_hangs_still_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "_run", run_here)
    monkeypatch.setattr(Tracking, "_replace", lambda self, executor, kill=False: None)
    fake = slow_tracking(start_s=0.1, timeout_s=0.5)
    try:
        with pytest.raises(TransientError, match="no answer"):
            await fake.call(lambda client, experiment: time.sleep(1.5))
    finally:
        fake._executor.shutdown()
