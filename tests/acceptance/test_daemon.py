"""`python -m daemon` as a user runs it: a subprocess on a temp config, real S3/Postgres/MLflow."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from tests.documents import make_pdf
from tests.helpers import (
    REPO,
    Daemon,
    Sinks,
    assert_exactly_once,
    drop,
    free_port,
    make_corpus,
    s3_config,
    wait_until,
    write_config,
)


def test_files_dropped_while_running_are_processed(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str,
        mlflow_server: str) -> None:
    """Files dropped into a running daemon reach S3, Postgres and MLflow (HTTP) and leave."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket,
                     mlflow={"tracking_uri": mlflow_server, "window_s": 0.5,
                             "experiment": f"acc-{bucket}"})
    zone = tmp_path / "zones" / "docs"
    with Daemon(path) as daemon:
        daemon.wait_for("daemon_ready", 120)
        texts = {f"note{i}.txt": f"note number {i} about the dropzone daemon" for i in range(3)}
        for name, text in texts.items():
            drop(zone, name, text)
        wait_until(lambda: len(daemon.named("file_processed")) == 3, 120, "three files")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    assert {e["outcome"] for e in daemon.named("file_processed")} == {"stored"}
    assert_exactly_once(Sinks(path), texts)
    assert sorted(p.name for p in (tmp_path / "var" / "done" / "docs").iterdir()) == sorted(texts)
    assert not list(zone.iterdir())
    assert daemon.named("daemon_stopped")


def slow_writer(path: Path, pieces: int, every_s: float) -> str:
    content = ""
    with open(path, "a", encoding="utf-8") as out:
        for i in range(pieces):
            line = f"line {i} of a file written slowly\n"
            out.write(line)
            out.flush()
            content += line
            time.sleep(every_s)
    return content


def test_a_slow_writer_is_not_picked_up_half_written(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """A file written in pieces for 10 s (settle 1 s) is stored once, complete."""
    zones = [{"name": "docs", "path": "zones/docs", "settle_ms": 1000}]
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket, zones=zones)
    target = tmp_path / "zones" / "docs" / "slow.log"
    with Daemon(path) as daemon:
        daemon.wait_for("daemon_ready", 120)
        result: list[str] = []
        writer = threading.Thread(target=lambda: result.append(slow_writer(target, 20, 0.5)))
        writer.start()
        writer.join()
        daemon.wait_for("file_processed", 60, path="slow.log")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    docs = Sinks(path).documents()
    assert [d["sha256"] for d in docs] == [hashlib.sha256(result[0].encode()).hexdigest()]
    assert len(daemon.named("file_processed")) == 1


def test_once_twice_stores_nothing_twice(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """Two `--once` over the same contents: stored once, the second makes no MLflow run."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket)
    zone = tmp_path / "zones" / "docs"
    texts = make_corpus(zone, 20)
    assert Daemon(path, "--once").run() == 0
    make_corpus(zone, 20)
    second = Daemon(path, "--once")
    assert second.run() == 0
    assert {e["outcome"] for e in second.named("file_processed")} == {"duplicate"}
    sinks = Sinks(path)
    assert_exactly_once(sinks, texts)
    assert len(sinks.mlflow_runs()) == 1


def test_sigterm_drains_and_exits_0(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """SIGTERM mid-backlog: in-flight files finish, claims are handed back, exit 0; a later
    `--once` completes the rest exactly once."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket)
    texts = make_corpus(tmp_path / "zones" / "docs", 300)
    sinks = Sinks(path)
    with Daemon(path) as daemon:
        daemon.wait_for("daemon_ready", 120)
        wait_until(lambda: len(sinks.documents()) >= 20, 120, "some documents")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    assert daemon.named("daemon_stopped")
    assert not sinks.query("SELECT id FROM dz_files WHERE claimed_by IS NOT NULL")
    assert Daemon(path, "--once").run() == 0
    assert_exactly_once(sinks, texts)


def test_kill_9_mid_batch_then_once_leaves_exactly_one_of_each(
        tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str) -> None:
    """kill -9 during a `--once`, then `--once` again: one object, document, record per file."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket)
    zone = tmp_path / "zones" / "docs"
    texts = make_corpus(zone, 300)
    sinks = Sinks(path)
    with Daemon(path, "--once") as first:
        wait_until(lambda: len(sinks.documents()) >= 30, 120, "30 documents")
        first.signal(signal.SIGKILL)
        assert first.wait(30) == -signal.SIGKILL
    assert len(sinks.documents()) < 300  # it really died in the middle
    again = Daemon(path, "--once")
    assert again.run() == 0, again.output()[-2000:]
    assert_exactly_once(sinks, texts)
    assert not list(zone.rglob("*.txt"))
    assert len(list((tmp_path / "var" / "done" / "docs").rglob("*.txt"))) == 300


def test_an_unreachable_database_exits_3_with_one_line(tmp_path: Path) -> None:
    """No Postgres at the configured address: exit 3 and a clear error, no traceback."""
    path = write_config(tmp_path, database=f"postgresql://nobody@127.0.0.1:{free_port()}/x")
    daemon = Daemon(path, "--once")
    assert daemon.run(120) == 3
    [error] = daemon.named("dependency_unreachable")
    assert error["error"].startswith("postgres: ")
    assert "Traceback" not in daemon.output()


def test_check_and_status(tmp_path: Path, database_url: str, s3_endpoint: str,
                          bucket: str) -> None:
    """`check` says ok for all three dependencies; `status --json` counts files by state."""
    path = s3_config(tmp_path, database_url, s3_endpoint, bucket)
    make_corpus(tmp_path / "zones" / "docs", 3)
    assert Daemon(path, "--once").run() == 0
    check = subprocess.run([sys.executable, "-m", "daemon", "check", "--config", str(path)],
                           capture_output=True, text=True, timeout=120, cwd=REPO)
    assert check.returncode == 0, check.stdout + check.stderr
    lines = [line for line in check.stdout.splitlines()
             if line.split()[0] in ("postgres", "objects", "mlflow")]
    assert [line.split()[:2] for line in lines] == [["postgres", "ok"], ["objects", "ok"],
                                                   ["mlflow", "ok"]]
    assert f"s3://{bucket}/dz/.dropzone-check/" in lines[1] and "SSE AES256" in lines[1]
    status = subprocess.run([sys.executable, "-m", "daemon", "status", "--json", "--config",
                             str(path)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert status.returncode == 0
    assert '"stored": 3' in status.stdout


def test_quickstart_on_the_embedded_defaults(tmp_path: Path) -> None:
    """The shipped example config, untouched: embedded Postgres, file store, sqlite MLflow."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    for zone in ("documents", "reports", "papers"):
        (tmp_path / "dropzones" / zone).mkdir(parents=True)
    drop(tmp_path / "dropzones" / "documents", "hello.txt", "hello from the quickstart")
    drop(tmp_path / "dropzones" / "reports", "q3.md", "# Q3\n\nrevenue is up")
    (tmp_path / "dropzones" / "papers" / "lattice.pdf").write_bytes(make_pdf(
        ["On lattices"], {"Title": "On Lattices", "Author": "E. Noether and H. Weyl",
                          "CreationDate": "D:19210101000000Z"}))
    path = tmp_path / "config" / "drop_zones.yaml"
    daemon = Daemon(path, "--once")
    assert daemon.run() == 0, daemon.output()[-2000:]
    sinks = Sinks(path)
    docs = {d["source_path"]: d for d in sinks.documents()}
    assert sorted(docs) == ["hello.txt", "lattice.pdf", "q3.md"]
    assert {d["doc_type"] for d in docs.values()} == {"document", "report", "research_paper"}
    paper = json.loads(docs["lattice.pdf"]["metadata"])
    assert (paper["title"], paper["authors"], paper["year"]) == (
        "On Lattices", ["E. Noether", "H. Weyl"], 1921)
    assert len(sinks.object_keys()) == 3
    assert sorted(r["source_path"] for r in sinks.mlflow_records()) == sorted(docs)
    assert (tmp_path / "var" / "done" / "documents" / "hello.txt").exists()


def test_a_large_backfill_goes_in_without_the_search_index_which_is_built_after(
        tmp_path: Path) -> None:
    """30 files (~28 chunks) against `defer_index_chunks: 10` on the embedded pgvector: the
    HNSW index is dropped before they go in, built over every chunk once they are in, and
    used."""
    path = write_config(tmp_path, database={"url": "embedded", "defer_index_chunks": 10})
    texts = make_corpus(tmp_path / "zones" / "docs", 30)
    daemon = Daemon(path, "--once")
    assert daemon.run() == 0, daemon.output()[-2000:]
    names = [e["event"] for e in daemon.events if e["event"].startswith("search_index")]
    assert names[0] == "search_index_deferred" and names[-1] == "search_index_built", names
    finder = Daemon(path, "search", "word17", "--json", "--limit", "1")
    assert finder.run(120) == 0, finder.output()[-2000:]
    hits = [e for e in finder.events if "score" in e]
    assert hits and texts[hits[0]["source_path"]].startswith("document batch 17"), hits


def mlflow_processes(pid: int) -> int:
    """The daemon's processes with MLflow's store open (SQLAlchemy's compiled parts mapped)."""
    count = 0
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(OSError):
            count += "/sqlalchemy/" in Path(f"/proc/{child.pid}/maps").read_text()
    return count


def test_the_mlflow_process_ends_when_idle_and_a_new_one_records_the_next_window(
        tmp_path: Path, database_url: str) -> None:
    """`mlflow.idle_stop_s` after its last window the MLflow process is gone; the next file
    is still recorded, once, by a new one."""
    path = write_config(tmp_path, database=database_url,
                        mlflow={"window_s": 0.5, "idle_stop_s": 2})
    zone, texts = tmp_path / "zones" / "docs", {"first.txt": "one", "second.txt": "two"}
    with Daemon(path) as daemon:
        daemon.wait_for("daemon_ready", 120)
        assert daemon.process is not None
        drop(zone, "first.txt", texts["first.txt"])
        daemon.wait_for("batch_tracked", 120)
        daemon.wait_for("mlflow_process_stopped", 60)
        wait_until(lambda: mlflow_processes(daemon.process.pid) == 0, 30,  # type: ignore[union-attr]
                   "no MLflow process")
        drop(zone, "second.txt", texts["second.txt"])
        wait_until(lambda: len(daemon.named("batch_tracked")) == 2, 120, "a second window")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    assert_exactly_once(Sinks(path), texts)
