"""Command line: `run` (the default), `--once`, `check`, `status` and `search`.

Exit codes: 0 all good; 1 some files quarantined; 2 bad config or usage; 3 a dependency could
not be reached (or `check` found one failing); 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import ValidationError

from daemon import __version__, config, logs
from daemon.config import EmbeddingSettings, Settings
from daemon.database import Database, server_facts, sql
from daemon.embedders import create as create_embedder
from daemon.errors import ConfigError, DaemonError
from daemon.ledger import state_of
from daemon.logs import redact_text
from daemon.objectstore import open_store
from daemon.reembed import reembed
from daemon.retry import RetryPolicy, describe
from daemon.search import Hit, Query
from daemon.search import search as find
from daemon.sessions import probe_mlflow, probe_store
from daemon.supervisor import EXIT_DEPENDENCY, EXIT_OK, EXIT_QUARANTINED, EXIT_USAGE, Supervisor
from daemon.tracking import Tracking

COMMANDS = ("run", "check", "status", "search", "reembed")
STATES = ("hash", "upload", "store", "track", "finish", "stored", "duplicate", "vanished",
          "superseded", "quarantined")
EPILOG = """examples:
  python -m daemon --config config/drop_zones.yaml          run the daemon
  python -m daemon --config config/drop_zones.yaml --once   process what is there, then exit
  python -m daemon check --config config/drop_zones.yaml    can it reach S3, Postgres, MLflow?
  python -m daemon status --json                            counts by zone and state
  python -m daemon search "quarterly revenue" --zone reports --limit 5
  python -m daemon reembed --provider sentence --model all-MiniLM-L6-v2 --replace
"""


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
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"dropzone {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{run,check,status,search,reembed}")
    run = commands.add_parser("run", parents=[common], help="watch the zones (default)")
    run.add_argument("--once", action="store_true",
                     help="process everything present, record it, finish the files, exit")
    commands.add_parser("check", parents=[common],
                        help="verify object store, Postgres and MLflow; exit 3 if one fails")
    status = commands.add_parser("status", parents=[common], help="counts by zone and state")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    _search_parser(commands, common)
    _reembed_parser(commands, common)
    return parser


def _reembed_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    again = commands.add_parser(
        "reembed", parents=[common], help="embed stored documents with another model",
        description="Give every stored document chunks of MODEL (default: the configured "
        "one), reading its text back from the object store; documents that have them already "
        "are skipped, so an interrupted run resumes. Set the same model in the config to "
        "search with it.")
    again.add_argument("--model", help="the model (default: embedding.model)")
    again.add_argument("--provider", choices=["hashing", "sentence", "http"],
                       help="its provider (default: embedding.provider)")
    again.add_argument("--zone", help="only documents of this zone")
    again.add_argument("--replace", action="store_true",
                       help="drop each document's chunks of other models")


def _search_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    find = commands.add_parser("search", parents=[common], help="documents nearest in meaning",
                               description="The documents nearest in meaning to QUERY, best "
                               "first, each with its best chunk.")
    find.add_argument("query", help="what to look for, in plain words")
    find.add_argument("--zone", help="only documents of this zone")
    find.add_argument("--doc-type", help="only documents of this doc_type")
    find.add_argument("--limit", type=int, default=10, help="documents to show (default 10)")
    find.add_argument("--json", action="store_true", help="one JSON object per line")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """`run` is the default command: `python -m daemon --once` means `run --once`."""
    argv = list(argv)
    wants_help = any(a in ("-h", "--help", "--version") for a in argv[:1])
    if not wants_help and not any(a in COMMANDS for a in argv):
        argv.insert(0, "run")
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        build_parser().print_help()
        return EXIT_USAGE
    try:
        settings = config.load(args.config)
    except ConfigError as exc:
        print(f"dropzone: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    stream = sys.stdout if args.command == "run" else sys.stderr
    logs.configure(args.log_level, args.log_format, stream)
    if args.command == "run":
        return Supervisor(settings, once=args.once).run()
    if args.command == "check":
        return asyncio.run(check(settings))
    if args.command == "search":
        return asyncio.run(search(settings, args))
    if args.command == "reembed":
        return reembed_command(settings, args)
    return asyncio.run(status(settings, args.json))


# -- check ------------------------------------------------------------------------------------

Probe = Callable[[Settings], Awaitable[str]]


async def _probe_database(settings: Settings) -> str:
    async with Database(settings) as db:
        facts = await server_facts(db.pool)
    vector = f"pgvector {facts['pgvector']}" if facts["pgvector"] else "no pgvector (real[])"
    where = "embedded" if settings.database.url == "embedded" else redact_text(
        settings.database.url)
    return f"PostgreSQL {facts['version']}, {vector}, schema v{facts['schema']} ({where})"


async def _probe_objects(settings: Settings) -> str:
    async with AsyncExitStack() as stack:
        store = await open_store(settings.storage, stack)
        put = await probe_store(store, RetryPolicy(attempts=2, deadline_s=15))
    where = f"{put.url.rsplit('/', 1)[0]}/: put, get, delete ok"
    if not settings.storage.is_s3:
        return f"{where}; SSE n/a (local folder)"
    wanted = None if settings.storage.sse == "none" else settings.storage.sse
    if put.sse != wanted:
        raise DaemonError(f"{where}, but SSE is {put.sse or 'none'} (configured: {wanted})")
    return f"{where}; SSE {put.sse or 'none'} confirmed by the store"


async def _probe_mlflow(settings: Settings) -> str:
    tracking = Tracking(settings.mlflow, settings.state_dir)
    try:
        experiment = await probe_mlflow(tracking, RetryPolicy(attempts=2, deadline_s=30))
    finally:
        tracking.close()
    uri = redact_text(settings.mlflow.tracking_uri)
    return f"{uri}: experiment '{settings.mlflow.experiment}' (id {experiment}) writable"


async def _run_probe(name: str, probe: Probe, settings: Settings) -> bool:
    start = time.perf_counter()
    try:
        detail, ok = await probe(settings), True
    except Exception as exc:
        error = exc if isinstance(exc, DaemonError) else None
        detail, ok = redact_text(str(error) if error else describe(exc)), False
    ms = (time.perf_counter() - start) * 1000
    print(f"{name:<9} {'ok' if ok else 'FAIL':<5} {detail} [{ms:.0f} ms]", flush=True)
    return ok


async def check(settings: Settings) -> int:
    """One line per dependency, like the original guide's setup script but honest."""
    probes = {"postgres": _probe_database, "objects": _probe_objects, "mlflow": _probe_mlflow}
    results = [await _run_probe(name, probe, settings) for name, probe in probes.items()]
    return EXIT_OK if all(results) else EXIT_DEPENDENCY


# -- status -----------------------------------------------------------------------------------

def summarize(settings: Settings, rows: Sequence[Any]) -> dict[str, Any]:
    """{zone: {"states": {state: files}, "bytes": n, "last_update": iso}} for every zone."""
    zones: dict[str, Any] = {z.name: {"states": {}, "bytes": 0, "last_update": None}
                             for z in settings.zones}
    for row in rows:
        zone = zones.setdefault(row["zone"], {"states": {}, "bytes": 0, "last_update": None})
        state = state_of(row["stage"], row["outcome"])
        zone["states"][state] = zone["states"].get(state, 0) + int(row["files"])
        zone["bytes"] += int(row["bytes"])
        last = row["last_update"].isoformat() if row["last_update"] else None
        zone["last_update"] = max(filter(None, (zone["last_update"], last)), default=None)
    return {"zones": zones}


def render_table(summary: dict[str, Any]) -> str:
    header = f"{'zone':<16}" + "".join(f"{s:>12}" for s in STATES)
    lines = [header]
    for name, zone in summary["zones"].items():
        counts = "".join(f"{zone['states'].get(s, 0):>12}" for s in STATES)
        lines.append(f"{name:<16}{counts}")
    return "\n".join(lines)


async def status(settings: Settings, as_json: bool) -> int:
    try:
        async with Database(settings) as db:
            rows = await db.pool.fetch(sql("status"))
    except DaemonError as exc:
        print(f"dropzone: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_DEPENDENCY
    summary = summarize(settings, rows)
    print(json.dumps(summary, indent=2) if as_json else render_table(summary))
    return EXIT_OK


# -- search -----------------------------------------------------------------------------------

async def search(settings: Settings, args: argparse.Namespace) -> int:
    query = Query(args.query, args.zone, args.doc_type, max(1, args.limit))
    try:
        async with Database(settings) as db, db.pool.acquire() as conn:
            hits = await find(conn, create_embedder(settings.embedding), query, db.vector)
    except (DaemonError, asyncpg.PostgresError, OSError) as exc:
        print(f"dropzone: search failed: {redact_text(describe(exc))}", file=sys.stderr)
        return EXIT_DEPENDENCY
    for rank, hit in enumerate(hits, 1):
        print(json.dumps(hit.as_json()) if args.json else render_hit(rank, hit))
    if not hits and not args.json:
        print("no documents match", file=sys.stderr)
    return EXIT_OK


def render_hit(rank: int, hit: Hit) -> str:
    title = hit.metadata.get("title") or hit.source_path
    excerpt = " ".join(hit.chunk.split())[:200]
    return (f"{rank:>2}. {hit.score:.3f}  {title}\n    {hit.zone}/{hit.source_path}  "
            f"{hit.object_url}\n    {excerpt}")


# -- reembed ----------------------------------------------------------------------------------

def reembed_command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        settings = with_model(settings, args.provider, args.model)
        done, failed = asyncio.run(reembed(settings, args.zone, args.replace))
    except ConfigError as exc:
        print(f"dropzone: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DaemonError as exc:
        print(f"dropzone: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_DEPENDENCY
    print(f"re-embedded {done} documents with {settings.embedding.model}"
          + (f"; {failed} could not be read (see the log)" if failed else ""), file=sys.stderr)
    return EXIT_QUARANTINED if failed else EXIT_OK


def with_model(settings: Settings, provider: str | None, model: str | None) -> Settings:
    """The settings with another embedding model, validated as the config file would be."""
    embedding = settings.embedding.model_dump()
    embedding.update({k: v for k, v in (("provider", provider), ("model", model)) if v})
    try:
        return settings.model_copy(update={"embedding": EmbeddingSettings(**embedding)})
    except ValidationError as exc:
        raise ConfigError([f"embedding: {e['msg']}" for e in exc.errors()]) from None
