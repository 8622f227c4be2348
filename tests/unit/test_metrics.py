"""Metrics: what is counted, how it renders, how retries are labelled, and the listen setting."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError
from prometheus_client.parser import text_string_to_metric_families

from daemon import __version__, config
from daemon.errors import ConfigError, TransientError
from daemon.ledger import FileRow
from daemon.metrics import Metrics
from daemon.pipeline import report
from daemon.retry import RetryPolicy, error_kind, retries_counted, retry_cause
from daemon.stages import Env, Job
from tests.unit.test_retry import FakeMlflowError, client_error


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a rendering, by name and labels, as a scraper would read it."""
    text = metrics.render().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def test_files_and_bytes_are_counted_by_zone_and_outcome() -> None:
    """Each finished file adds one to its zone and outcome, and its size to the bytes."""
    metrics = Metrics()
    metrics.file_done("docs", "stored", 100, {})
    metrics.file_done("docs", "stored", 50, {})
    metrics.file_done("docs", "quarantined", 7, {})
    metrics.file_done("pics", "duplicate", 3, {})
    assert value(metrics, "dropzone_files_total", zone="docs", outcome="stored") == 2
    assert value(metrics, "dropzone_bytes_total", zone="docs", outcome="stored") == 150
    assert value(metrics, "dropzone_files_total", zone="docs", outcome="quarantined") == 1
    assert value(metrics, "dropzone_bytes_total", zone="pics", outcome="duplicate") == 3


def test_stage_times_go_into_the_histogram_in_seconds() -> None:
    """Stage milliseconds become one observation per stage, in seconds, in the right bucket."""
    metrics = Metrics()
    metrics.file_done("docs", "stored", 1, {"hash": 2.0, "upload": 1500.0})
    metrics.file_done("docs", "stored", 1, {"upload": 500.0})
    name = "dropzone_stage_duration_seconds"
    assert value(metrics, f"{name}_count", stage="upload") == 2
    assert value(metrics, f"{name}_sum", stage="upload") == pytest.approx(2.0)
    assert value(metrics, f"{name}_count", stage="hash") == 1
    assert value(metrics, f"{name}_bucket", stage="upload", le="1.0") == 1
    assert value(metrics, f"{name}_bucket", stage="upload", le="+Inf") == 2
    assert value(metrics, f"{name}_bucket", stage="hash", le="0.0025") == 1


def test_last_success_is_set_only_when_the_content_reached_every_sink() -> None:
    """stored and duplicate set the zone's last-success time; quarantined and vanished do not."""
    metrics = Metrics()
    metrics.file_done("docs", "quarantined", 1, {})
    metrics.file_done("docs", "vanished", 1, {})
    assert value(metrics, "dropzone_last_success_timestamp_seconds", zone="docs") is None
    metrics.file_done("docs", "duplicate", 1, {})
    stamp = value(metrics, "dropzone_last_success_timestamp_seconds", zone="docs")
    assert stamp is not None and stamp > 1.7e9


def test_retries_queue_depth_and_info_render() -> None:
    """Retries count by cause, the queue gauge holds its last value, the version is shown."""
    metrics = Metrics()
    metrics.retried("put_timeout")
    metrics.retried("put_timeout")
    metrics.retried("outage")
    metrics.queue_depth("docs", 12)
    metrics.queue_depth("docs", 4)
    assert value(metrics, "dropzone_retries_total", cause="put_timeout") == 2
    assert value(metrics, "dropzone_retries_total", cause="outage") == 1
    assert value(metrics, "dropzone_queue_depth", zone="docs") == 4
    assert value(metrics, "dropzone_info", version=__version__) == 1


def test_each_metrics_object_has_its_own_registry() -> None:
    """Two daemons in one process count apart and never clash on registration."""
    first, second = Metrics(), Metrics()
    first.retried("file_retry")
    assert value(first, "dropzone_retries_total", cause="file_retry") == 1
    assert value(second, "dropzone_retries_total", cause="file_retry") is None


def test_report_counts_the_file_when_metrics_are_on() -> None:
    """pipeline.report hands the file's zone, outcome, size and stage times to the metrics."""
    metrics, settings = Metrics(), cast(Any, None)
    env = Env(settings, cast(Any, None), cast(Any, None), cast(Any, None), metrics=metrics)
    row = FileRow(1, "docs", "a.txt", 42, 0, stage="done", outcome="stored",
                  stage_ms={"hash": 1.0})
    report(Job(row, cast(Any, None)), env)
    assert value(metrics, "dropzone_files_total", zone="docs", outcome="stored") == 1
    assert value(metrics, "dropzone_bytes_total", zone="docs", outcome="stored") == 42
    assert env.counts == {"stored": 1}


@pytest.mark.parametrize(("exc", "kind"), [
    (TimeoutError(), "timeout"),
    (ReadTimeoutError(endpoint_url="http://x"), "timeout"),
    (client_error("RequestTimeout", 400), "timeout"),
    (client_error("SlowDown", 503), "throttled"),
    (client_error("Whatever", 429), "throttled"),
    (asyncpg.TooManyConnectionsError("x"), "throttled"),
    (FakeMlflowError("slow down", "REQUEST_LIMIT_EXCEEDED"), "throttled"),
    (ConnectionResetError(), "connection"),
    (EndpointConnectionError(endpoint_url="http://x"), "connection"),
    (asyncpg.InterfaceError("connection is closed"), "connection"),
    (asyncpg.ConnectionFailureError("x"), "connection"),
    (asyncpg.SerializationError("x"), "conflict"),
    (asyncpg.DeadlockDetectedError("x"), "conflict"),
    (client_error("InternalError", 500), "server_error"),
    (client_error("Whatever", 502), "server_error"),
    (asyncpg.AdminShutdownError("x"), "server_error"),
    (FakeMlflowError("down", "TEMPORARILY_UNAVAILABLE"), "server_error"),
    (OSError(errno.ENOSPC, "No space left on device"), "other"),
    (ValueError("bug"), "other"),
    (None, "other"),
])
def test_error_kinds(exc: BaseException | None, kind: str) -> None:
    """Each retried error falls into one of a few kinds, as the table says."""
    assert error_kind(exc) == kind


def test_error_kind_looks_behind_our_own_errors() -> None:
    """A TransientError raised from a timeout is a timeout."""
    try:
        try:
            raise TimeoutError
        except TimeoutError as inner:
            raise TransientError("put k: timed out") from inner
    except TransientError as exc:
        assert error_kind(exc) == "timeout"


@pytest.mark.parametrize(("what", "cause"), [
    ("put dropzones/docs/ab12/my file.txt", "put_connection"),
    ("probe put", "probe_connection"),
    ("mlflow batch run", "mlflow_connection"),
    ("transaction", "transaction_connection"),
    ("", "other_connection"),
    ("{weird} key", "other_connection"),
])
def test_retry_causes_never_carry_keys(what: str, cause: str) -> None:
    """The cause is the first word of `what` and the error kind: a key never becomes a label."""
    assert retry_cause(what, ConnectionRefusedError()) == cause


async def test_retries_inside_a_policy_reach_the_hook_while_it_is_installed() -> None:
    """Two retries of one call count twice under `retries_counted`, and not at all after it."""
    metrics, calls = Metrics(), []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) % 3:
            raise ConnectionResetError("reset")
        return "ok"

    policy = RetryPolicy(attempts=5, base_s=0.001, max_s=0.01)
    with retries_counted(metrics.retried):
        assert await policy.call("put some/key", flaky) == "ok"
    assert await policy.call("put some/key", flaky) == "ok"
    assert value(metrics, "dropzone_retries_total", cause="put_connection") == 2


def minimal(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    (tmp_path / "in").mkdir(exist_ok=True)
    return {"zones": [{"name": "docs", "path": "in"}], **extra}


@pytest.mark.parametrize(("listen", "expected"), [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("localhost:1", ("localhost", 1)),
    ("[::1]:65535", ("::1", 65535)),
    ("0.0.0.0:9464", ("0.0.0.0", 9464)),
])
def test_listen_addresses_that_load(tmp_path: Path, listen: str,
                                    expected: tuple[str, int]) -> None:
    """host:port and [v6]:port load and split into host and port."""
    settings = config.parse(minimal(tmp_path, metrics={"listen": listen}), tmp_path, {})
    assert settings.metrics.listen == listen
    assert config.MetricsSettings.split(listen) == expected


@pytest.mark.parametrize("section", [None, {}, {"listen": None}, {"listen": ""},
                                     {"listen": "${METRICS_LISTEN:-}"}])
def test_metrics_are_off_by_default(tmp_path: Path, section: dict[str, Any] | None) -> None:
    """No section, no address, null or an empty variable: no endpoint."""
    data = minimal(tmp_path) if section is None else minimal(tmp_path, metrics=section)
    assert config.parse(data, tmp_path, {}).metrics.listen is None


@pytest.mark.parametrize(("listen", "message"), [
    ("127.0.0.1:0", "port '0' is not a number from 1 to 65535"),
    ("127.0.0.1:65536", "port '65536' is not a number from 1 to 65535"),
    ("127.0.0.1:http", "port 'http' is not a number from 1 to 65535"),
    ("9464", "'9464' is not host:port, like 127.0.0.1:9464"),
    (":9464", "':9464' is not host:port, like 127.0.0.1:9464"),
    ("bad host:9464", "'bad host:9464' is not host:port"),
    ("::1:9464", "an IPv6 address goes in brackets, like [::1]:9464"),
    ("http://127.0.0.1:9464", "has a scheme or path: give host:port only"),
    (9464, 'must be host:port in quotes, like "127.0.0.1:9464"'),
    (True, "must be host:port in quotes"),
])
def test_bad_listen_addresses_are_refused_with_the_key(tmp_path: Path, listen: Any,
                                                       message: str) -> None:
    """A bad address is refused before start, on one line naming metrics.listen."""
    with pytest.raises(ConfigError) as caught:
        config.parse(minimal(tmp_path, metrics={"listen": listen}), tmp_path, {})
    [problem] = caught.value.problems
    assert problem.startswith("metrics.listen: ")
    assert message in problem


def test_unknown_metrics_keys_are_refused(tmp_path: Path) -> None:
    """A misspelt key is an error, not silence."""
    with pytest.raises(ConfigError, match=r"metrics\.port: unknown key"):
        config.parse(minimal(tmp_path, metrics={"port": 9464}), tmp_path, {})


def test_error_kind_stops_at_a_cause_chain_that_loops() -> None:
    """An error that is its own cause has kind `other`, rather than no answer at all."""
    looped = TransientError("x")
    looped.__cause__ = looped
    assert error_kind(looped) == "other"
