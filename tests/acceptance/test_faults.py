"""Dependencies that fail for real: through a fault-injecting proxy, and inside Postgres.

S3 down, throttling, a missing bucket; Postgres connections cut, a real restart, too many
connections, serialization failures, bad data, missing privileges; MLflow down. Files wait
while a dependency is away and complete exactly once when it is back; only a file's own fault
quarantines it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import asyncpg
import pytest

from daemon.database import start_embedded, with_database
from tests.faultproxy import FaultProxy
from tests.helpers import (
    Daemon,
    Sinks,
    assert_exactly_once,
    make_corpus,
    proxy_for,
    s3_config,
    s3_storage,
    stop_embedded,
    via_proxy,
    wait_until,
    write_config,
)


@pytest.fixture
def s3_proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    proxy = proxy_for(s3_endpoint)
    yield proxy
    proxy.stop()


async def _sql(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def sql(url: str, *statements: str) -> None:
    asyncio.run(_sql(url, *statements))


def ledger_outcomes(sinks: Sinks) -> list[str]:
    return [str(r["outcome"]) for r in sinks.ledger()]


def test_s3_down_for_30_s_files_wait_then_complete(
        tmp_path: Path, database_url: str, bucket: str, s3_proxy: FaultProxy) -> None:
    """S3 refuses connections for 30 s while files arrive: nothing is quarantined, one
    dependency_down line is logged, and when S3 is back every file completes exactly once."""
    storage = s3_storage(f"http://127.0.0.1:{s3_proxy.port}", bucket)
    path = write_config(tmp_path, database=database_url, storage=storage,
                        mlflow={"window_s": 0.5})
    zone = tmp_path / "zones" / "docs"
    with Daemon(path) as daemon:
        daemon.wait_for("daemon_ready", 120)
        s3_proxy.set("refuse")
        texts = make_corpus(zone, 12)
        daemon.wait_for("dependency_down", 60, dependency="objects")
        time.sleep(30)
        sinks = Sinks(path)
        assert sinks.documents() == [] and "quarantined" not in ledger_outcomes(sinks)
        s3_proxy.set("pass")
        wait_until(lambda: len(daemon.named("file_processed")) == 12, 180, "all files")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    assert_exactly_once(Sinks(path), texts)
    assert len(daemon.named("dependency_down")) == 1
    assert daemon.named("dependency_recovered")


def test_s3_throttling_is_retried_with_backoff(
        tmp_path: Path, database_url: str, bucket: str, s3_proxy: FaultProxy) -> None:
    """503 SlowDown on the first requests: retried with backoff, nothing lost or doubled."""
    storage = s3_storage(f"http://127.0.0.1:{s3_proxy.port}", bucket)
    path = write_config(tmp_path, database=database_url, storage=storage)
    texts = make_corpus(tmp_path / "zones" / "docs", 6)
    s3_proxy.set("http503", count=8)
    daemon = Daemon(path, "--once")
    assert daemon.run() == 0, daemon.output()[-2000:]
    assert any("SlowDown" in str(e.get("error")) for e in daemon.named("retrying"))
    assert_exactly_once(Sinks(path), texts)


def test_a_missing_bucket_is_refused_without_quarantining(
        tmp_path: Path, database_url: str, s3_endpoint: str) -> None:
    """NoSuchBucket is not retried and quarantines nothing: --once says why and exits 3."""
    path = s3_config(tmp_path, database_url, s3_endpoint, "no-such-bucket-anywhere")
    zone = tmp_path / "zones" / "docs"
    texts = make_corpus(zone, 5)
    started = time.monotonic()
    daemon = Daemon(path, "--once")
    assert daemon.run() == 3
    assert time.monotonic() - started < 60
    [refusal] = daemon.named("dependency_refuses")
    assert "NoSuchBucket" in refusal["error"]
    assert not daemon.named("retrying")
    assert "quarantined" not in ledger_outcomes(Sinks(path))
    assert sorted(p.relative_to(zone).as_posix() for p in zone.rglob("*.txt")) == sorted(texts)


def hold(proxy: FaultProxy, fault: str, seconds: float = 5) -> Callable[[], None]:
    """A disruption: `fault` on the proxy for `seconds`, then back to passing traffic."""
    def disrupt() -> None:
        proxy.set(fault)
        time.sleep(seconds)
        proxy.set("pass")
    return disrupt


def once_through(path: Path, texts: dict[str, str], after_docs: int,
                 disrupt: Callable[[], None]) -> None:
    """A --once that is disrupted once `after_docs` documents are stored must still exit 0
    with every file once in every sink."""
    sinks = Sinks(path)
    with Daemon(path, "--once") as daemon:
        wait_until(lambda: len(sinks.documents()) >= after_docs, 120, f"{after_docs} docs")
        disrupt()
        assert daemon.wait(300) == 0, daemon.problems()
    assert_exactly_once(sinks, texts)


def test_postgres_connections_cut_mid_run(tmp_path: Path, database_url: str, s3_endpoint: str,
                                          bucket: str) -> None:
    """Every Postgres connection reset, new ones refused for 5 s, mid-run: the pool recovers
    and every file completes exactly once."""
    proxy = proxy_for(database_url)
    try:
        path = s3_config(tmp_path, via_proxy(database_url, proxy), s3_endpoint, bucket)
        texts = make_corpus(tmp_path / "zones" / "docs", 150)
        once_through(path, texts, 20, hold(proxy, "refuse"))
    finally:
        proxy.stop()


def test_a_real_postgres_restart_mid_run(tmp_path: Path, s3_endpoint: str, bucket: str) -> None:
    """The embedded server is restarted (pg_ctl restart) while files are being stored."""
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

    # not under tmp_path: another pytest run on the machine makes pytest-of-<user> 0700 again,
    # and pg_ctl runs as the `pgserver` user (as the session's pg_server fixture does)
    with tempfile.TemporaryDirectory(prefix="dz-pg-restart-") as state:
        admin = start_embedded(Path(state))
        path = s3_config(tmp_path, with_database(admin, "postgres"), s3_endpoint, bucket)
        texts = make_corpus(tmp_path / "zones" / "docs", 150)
        restart = partial(pg_ctl, ["-w", "-m", "fast", "restart"], pgdata=Path(state) / "pg",
                          user="pgserver" if os.geteuid() == 0 else None)
        try:
            once_through(path, texts, 20, restart)
        finally:  # pgserver stops only the postmaster it started, which the restart replaced
            stop_embedded(Path(state) / "pg")


def test_too_many_connections_are_waited_out(tmp_path: Path, database_url: str,
                                             s3_endpoint: str, bucket: str) -> None:
    """A role limited to 2 connections, a pool of 6: refused connections are retried."""
    role = f"dz_{uuid.uuid4().hex[:8]}"
    sql(database_url, f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 2",
        f"GRANT ALL ON SCHEMA public TO {role}")
    limited = database_url.replace("postgres@", f"{role}@").replace("postgres:@", f"{role}:@")
    try:
        path = s3_config(tmp_path, {"url": limited, "pool_max": 6}, s3_endpoint, bucket,
                         pipeline={"workers": 6, "retry_base_s": 0.2})
        texts = make_corpus(tmp_path / "zones" / "docs", 40)
        daemon = Daemon(path, "--once")
        assert daemon.run() == 0, daemon.problems()
        assert any("TooManyConnections" in str(e.get("error")) for e in daemon.named("retrying"))
        assert_exactly_once(Sinks(path), texts)
    finally:
        sql(database_url, f"REASSIGN OWNED BY {role} TO postgres", f"DROP OWNED BY {role}",
            f"DROP ROLE {role}")


INJECT = """
CREATE SEQUENCE dz_injected;
CREATE FUNCTION dz_inject() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.source_path LIKE '%poison%' THEN
    RAISE EXCEPTION 'poison refused' USING ERRCODE = 'check_violation';
  END IF;
  IF nextval('dz_injected') <= 3 THEN
    RAISE EXCEPTION 'injected conflict' USING ERRCODE = 'serialization_failure';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER dz_inject BEFORE INSERT ON documents FOR EACH ROW EXECUTE FUNCTION dz_inject();
"""


def test_serialization_failures_retry_the_unit_and_bad_data_is_permanent(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """Three serialization failures are retried (whole transactions, chunks included); a
    constraint violation quarantines only its own file."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket)
    assert Daemon(path, "--once").run() == 0  # creates the schema
    sql(database_url, INJECT)
    zone = tmp_path / "zones" / "docs"
    texts = make_corpus(zone, 8)
    (zone / "poison.txt").write_text("this one breaks a constraint")
    daemon = Daemon(path, "--once")
    assert daemon.run() == 1
    retried = [e for e in daemon.named("retrying") if "SerializationError" in str(e["error"])]
    assert len(retried) == 3
    assert_exactly_once(Sinks(path), texts)
    [bad] = [e for e in daemon.named("file_processed") if e["outcome"] == "quarantined"]
    assert bad["path"] == "poison.txt" and "CheckViolation" in bad["error"]
    report = tmp_path / "var" / "quarantine" / "docs" / "poison.txt.error.json"
    assert "poison refused" in report.read_text()


def test_a_missing_privilege_makes_files_wait(tmp_path: Path, database_url: str,
                                              s3_endpoint: str, bucket: str) -> None:
    """A role that may not insert documents: refused, exit 3, nothing quarantined."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket)
    assert Daemon(path, "--once").run() == 0
    role = f"dz_{uuid.uuid4().hex[:8]}"
    sql(database_url, f"CREATE ROLE {role} LOGIN",
        f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}",
        f"REVOKE INSERT ON documents FROM {role}")
    limited = database_url.replace("postgres@", f"{role}@").replace("postgres:@", f"{role}:@")
    try:
        path = s3_config(tmp_path, limited, s3_endpoint, bucket)
        make_corpus(tmp_path / "zones" / "docs", 4)
        daemon = Daemon(path, "--once")
        assert daemon.run() == 3, daemon.problems()
        [refusal] = daemon.named("dependency_refuses")
        assert "InsufficientPrivilege" in refusal["error"]
        assert "quarantined" not in ledger_outcomes(Sinks(path))
    finally:
        sql(database_url, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


def test_mlflow_down_then_back(tmp_path: Path, database_url: str, s3_endpoint: str,
                               bucket: str, mlflow_server: str) -> None:
    """MLflow away: files are uploaded and stored but stay in the zone; when it is back the
    records catch up, once each, and the files leave."""
    proxy = proxy_for(mlflow_server)
    try:
        mlflow = {"tracking_uri": f"http://127.0.0.1:{proxy.port}", "window_s": 0.5,
                  "experiment": f"down-{bucket}"}
        path = s3_config(tmp_path, database_url, s3_endpoint, bucket, mlflow=mlflow)
        zone = tmp_path / "zones" / "docs"
        sinks = Sinks(path)
        with Daemon(path) as daemon:
            daemon.wait_for("daemon_ready", 120)
            proxy.set("refuse")
            texts = make_corpus(zone, 6)
            wait_until(lambda: len(sinks.documents()) == 6, 120, "six documents")
            time.sleep(3)
            assert len(list(zone.rglob("*.txt"))) == 6
            proxy.set("pass")
            wait_until(lambda: len(daemon.named("file_processed")) == 6, 180, "files finished")
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(60) == 0
        assert_exactly_once(sinks, texts)
        assert not list(zone.rglob("*.txt"))
    finally:
        proxy.stop()


def test_the_documented_least_privilege_role_is_enough(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """With the schema made by an owner, a role holding only the grants in docs/security.md
    runs a whole --once."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket)
    assert Daemon(path, "--once").run() == 0  # the owner creates the schema
    role, database = f"dz_{uuid.uuid4().hex[:8]}", database_url.split("?")[0].rsplit("/", 1)[1]
    sql(database_url, f"CREATE ROLE {role} LOGIN",
        f'GRANT CONNECT ON DATABASE "{database}" TO {role}',
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT ON dz_schema TO {role}",
        f"GRANT SELECT, INSERT, UPDATE ON documents, document_embeddings, dz_files, dz_contents "
        f"TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON dz_daemons TO {role}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
    limited = database_url.replace("postgres@", f"{role}@").replace("postgres:@", f"{role}:@")
    try:
        path = s3_config(tmp_path, limited, s3_endpoint, bucket)
        texts = make_corpus(tmp_path / "zones" / "docs", 10)
        daemon = Daemon(path, "--once")
        assert daemon.run() == 0, daemon.problems()
        assert_exactly_once(Sinks(path), texts)
    finally:
        sql(database_url, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


def test_a_slow_then_stalled_s3_only_delays(tmp_path: Path, database_url: str, bucket: str,
                                            s3_proxy: FaultProxy) -> None:
    """S3 answering slowly, then not at all for 5 s mid-run, then normally: every file once."""
    storage = s3_storage(f"http://127.0.0.1:{s3_proxy.port}", bucket)
    path = write_config(tmp_path, database=database_url, storage=storage)
    texts = make_corpus(tmp_path / "zones" / "docs", 60)
    s3_proxy.set("slow", delay_s=0.02)
    once_through(path, texts, 10, hold(s3_proxy, "stall"))
