"""Object keys with the found time (`{found:...}`): the ledger's discovery time, kept across
retries, with the content hash that keeps same-named files apart."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest

from tests.faultproxy import FaultProxy
from tests.helpers import Daemon, Sinks, drop, proxy_for, s3_storage, write_config

TEMPLATE = "dropzones/{found:%Y%m%d_%H%M%S_%f}/{doc_type}/{sha256}/{name}"


@pytest.fixture
def s3_proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    proxy = proxy_for(s3_endpoint)
    yield proxy
    proxy.stop()


def test_keys_carry_the_found_time_through_a_failed_upload(
        tmp_path: Path, database_url: str, bucket: str, s3_proxy: FaultProxy) -> None:
    """S3 throttles the first uploads: the retried puts use the key the ledger row records,
    each file lands once, and the key's time is the row's discovery time (UTC, to the
    microsecond); two `report.txt` in two folders get two keys."""
    storage = {**s3_storage(f"http://127.0.0.1:{s3_proxy.port}", bucket), "key_template": TEMPLATE}
    path = write_config(tmp_path, database=database_url, storage=storage)
    zone = tmp_path / "zones" / "docs"
    drop(zone / "a", "report.txt", "the first report")
    drop(zone / "b", "report.txt", "another report, same name")
    s3_proxy.set("http503", count=4)
    daemon = Daemon(path, "--once")
    assert daemon.run() == 0, daemon.output()[-2000:]
    sinks = Sinks(path)
    rows = sinks.ledger()
    retried = {str(e["what"]).removeprefix("put ") for e in daemon.named("retrying")
               if "SlowDown" in str(e.get("error")) and str(e["what"]).startswith("put ")}
    assert retried and retried <= {r["object_key"] for r in rows}, retried
    expected = sorted(
        f"dz/dropzones/{r['discovered_at'].astimezone(UTC):%Y%m%d_%H%M%S_%f}/document/"
        f"{r['sha256']}/report.txt" for r in rows)
    assert sorted(f"dz/{r['object_key']}" for r in rows) == expected
    assert sinks.object_keys() == expected
