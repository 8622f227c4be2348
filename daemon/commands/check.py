"""`check`: can this daemon work here? One line per thing checked, and an exit code that says
which kind of thing failed.

Each line is `name status detail [ms]`, status `ok`, `warn` (works, but read the note), `FAIL`
or `n/a`. Dependencies are really used (a probe object is written, read and deleted; an MLflow
tag is written); zone folders are checked with the rights of the user running `check`, which
should be the user the daemon runs as.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import pwd
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from daemon.commands import explain
from daemon.config import Settings, ZoneSettings
from daemon.database import Database, server_facts, sql
from daemon.errors import EXIT_DEPENDENCY, EXIT_OK, DaemonError
from daemon.logs import redact_text
from daemon.objectstore import ObjectStore, S3Store, open_store
from daemon.retry import RetryPolicy, describe
from daemon.sessions import probe_mlflow, probe_store
from daemon.tracking import Tracking, store_problem

OK, WARN, FAIL, NA = "ok", "warn", "FAIL", "n/a"
EXIT_ZONE = 4  # a zone folder, or its done or quarantine folder, is unusable
EXIT_CLOCK = 5  # the clock is so far off the S3 endpoint's that SigV4 requests are refused
SKEW_WARN_S = 5.0
# what S3 endpoints answer to a body that does not match its declared checksum
CHECKSUM_REFUSALS = frozenset({"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch",
                               "XAmzContentSHA256Mismatch"})
SKEW_FAIL_S = 15 * 60.0  # S3 refuses a SigV4 request signed more than 15 minutes off its time
RWX = os.R_OK | os.W_OK | os.X_OK
WX = os.W_OK | os.X_OK
RIGHTS = ((os.R_OK, "read"), (os.W_OK, "write"), (os.X_OK, "enter (x)"))
CONTINUATION = " " * 16
EXIT_CODES = f"""exit codes:
  0  everything ok (warnings allowed)
  2  bad config or usage
  {EXIT_DEPENDENCY}  a dependency (postgres, objects, mlflow) failed or could not be reached
  {EXIT_ZONE}  a zone folder, or its done/quarantine folder, is unusable by this user
  {EXIT_CLOCK}  this clock is more than 15 min off the S3 endpoint's (SigV4 is refused)
  when several fail, the lowest of these codes is returned
"""
OBJECTS_HINT = ("check storage.url (bucket), storage.endpoint_url and the network path,\n"
                "and the AWS credentials (environment, ~/.aws profile or instance role)")
LOCAL_OBJECTS_HINT = "check that the folder of storage.url is writable by this user"
MLFLOW_HINT = ("check mlflow.tracking_uri, that the server answers,\n"
               "and MLFLOW_TRACKING_* credentials in the environment")
ZONE_HINT = ("the daemon moves files out of the zone into its done and quarantine folders:\n"
             "it needs read, write and enter (x) rights on the zone folder, and the other two\n"
             "must be folders it may write into, or create; run check as the daemon's user")
Access = Callable[[Path, int], bool]


@dataclass(frozen=True)
class Line:
    """One checked thing: its verdict, what was found, and the exit code its failure means."""

    name: str
    status: str
    detail: str
    ms: float | None = None
    code: int = EXIT_DEPENDENCY

    def render(self) -> str:
        """`name status detail [ms]`; a hint goes on indented lines below."""
        took = f" [{self.ms:.0f} ms]" if self.ms is not None else ""
        first, *more = redact_text(self.detail).split("\n")
        return "\n".join([f"{self.name:<9} {self.status:<5} {first}{took}",
                          *(f"{CONTINUATION}{line.strip()}" for line in more)])


def exit_code(lines: Sequence[Line]) -> int:
    """0 unless a line failed; then the lowest code among the failures."""
    return min((line.code for line in lines if line.status == FAIL), default=EXIT_OK)


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def ms(self) -> float:
        return (time.perf_counter() - self.start) * 1000


def failed(name: str, exc: BaseException, watch: Stopwatch, hint: str = "") -> Line:
    detail = str(exc) if isinstance(exc, DaemonError) else describe(exc)
    return Line(name, FAIL, detail + (f"\n{hint}" if hint else ""), watch.ms)


# -- postgres and pgvector -------------------------------------------------------------------

async def database_lines(settings: Settings) -> list[Line]:
    watch = Stopwatch()
    try:
        async with Database(settings) as db:
            facts = await server_facts(db.pool)
            vector = dict(await db.pool.fetchrow(sql("pgvector_facts")))
    except Exception as exc:
        message, _ = explain(exc, settings)
        return [Line("postgres", FAIL, message, watch.ms),
                Line("pgvector", NA, "unknown: the database could not be used")]
    return [Line("postgres", OK, database_detail(settings, facts), watch.ms),
            pgvector_line(vector, settings.embedding.dim)]


def database_detail(settings: Settings, facts: Mapping[str, Any]) -> str:
    vector = f"pgvector {facts['pgvector']}" if facts["pgvector"] else "no pgvector (real[])"
    where = "embedded" if settings.database.url == "embedded" else settings.database.url
    return f"PostgreSQL {facts['version']}, {vector}, schema v{facts['schema']} ({where})"


def pgvector_line(facts: Mapping[str, Any], dim: int) -> Line:
    """Whether search goes through pgvector, and if not, why not and how to get it."""
    column = str(facts.get("column_type") or "")
    if column.startswith("vector"):
        index = ("through its HNSW index" if facts.get("hnsw_index") else
                 "without an HNSW index (database.hnsw_index: false, no right to create it, "
                 "or left out while a large backlog goes in)")
        return Line("pgvector", OK, f"pgvector {facts.get('installed')}: embeddings are "
                    f"{column}; search uses cosine distance {index}")
    return Line("pgvector", WARN, f"{_why_no_vector(facts)}: search falls back to a slow "
                "linear scan, scoring every chunk's real[] in SQL\n"
                + _how_to_get_vector(facts, dim))


def _why_no_vector(facts: Mapping[str, Any]) -> str:
    if facts.get("installed"):
        return (f"pgvector {facts['installed']} is in this database, but its embeddings were "
                "created as real[] before it")
    if facts.get("available"):
        return f"pgvector {facts['available']} is on the server but not in this database"
    return "pgvector is not installed on this PostgreSQL server"


def _how_to_get_vector(facts: Mapping[str, Any], dim: int) -> str:
    new_db = (f"then point database.url at a new database: dropzone creates it with\n"
              f"vector({dim}) columns and an HNSW index")
    if facts.get("installed") or facts.get("available"):
        return ("to use it: CREATE EXTENSION vector needs a superuser (or a role allowed to "
                f"create it);\n{new_db}")
    return (f"to install it on the server: apt install postgresql-"
            f"{facts.get('major') or '<major>'}-pgvector (Debian, Ubuntu),\n"
            f"or see https://github.com/pgvector/pgvector#installation;\n{new_db}")


# -- objects and clock ------------------------------------------------------------------------

async def objects_lines(settings: Settings) -> list[Line]:
    watch = Stopwatch()
    hint = OBJECTS_HINT if settings.storage.is_s3 else LOCAL_OBJECTS_HINT
    try:
        async with AsyncExitStack() as stack:
            store = await open_store(settings.storage, stack)
            objects = await _objects_line(settings, store, watch, hint)
            return [objects, await clock_line(store), await checksum_line(store)]
    except Exception as exc:
        return [failed("objects", exc, watch, hint), Line("clock", NA, "S3 not reached"),
                Line("checksum", NA, "S3 not reached")]


async def _objects_line(settings: Settings, store: ObjectStore, watch: Stopwatch,
                        hint: str) -> Line:
    try:
        put = await probe_store(store, RetryPolicy(attempts=2, deadline_s=15))
    except Exception as exc:
        return failed("objects", exc, watch, hint)
    where = f"{put.url.rsplit('/', 1)[0]}/: put, get, delete ok"
    if not settings.storage.is_s3:
        return Line("objects", OK, f"{where}; SSE n/a (local folder)", watch.ms)
    wanted = None if settings.storage.sse == "none" else settings.storage.sse
    if put.sse != wanted:
        return Line("objects", FAIL, f"{where}, but SSE is {put.sse or 'none'} (configured: "
                    f"{wanted})", watch.ms)
    return Line("objects", OK, f"{where}; SSE {put.sse or 'none'} confirmed by the store",
                watch.ms)


async def clock_line(store: ObjectStore) -> Line:
    """This host's clock against the Date header of an S3 answer (SigV4 signs the time)."""
    if not isinstance(store, S3Store):
        return Line("clock", NA, "local folder storage: no S3 clock to compare with")
    watch, before = Stopwatch(), time.time()
    try:
        date = (await asyncio.wait_for(s3_headers(store), 15)).get("date")
    except Exception as exc:
        return Line("clock", NA, f"S3 did not answer ({describe(exc)})", watch.ms)
    if not date:
        return Line("clock", NA, "the S3 endpoint sent no Date header", watch.ms)
    here = (before + time.time()) / 2
    # the header is cut to the second: the endpoint's time was half a second later on average
    return clock_verdict(parsedate_to_datetime(date).timestamp() + 0.5 - here, watch.ms)


async def s3_headers(store: S3Store) -> dict[str, str]:
    """The HTTP headers of a HEAD on the bucket, even if S3 refused it (then it still dates
    its answer: a refusal for a skewed clock is exactly what this looks for)."""
    from botocore.exceptions import ClientError

    try:
        response = await store.client.head_bucket(Bucket=store.bucket)
    except ClientError as exc:
        response = exc.response
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return {str(k).lower(): str(v) for k, v in headers.items()}


async def checksum_line(store: ObjectStore) -> Line:
    """Does the endpoint verify what it is sent? One PUT whose `x-amz-checksum-sha256` names
    other bytes than its body: AWS (and SeaweedFS) refuse it with BadDigest; an endpoint that
    stores it checks nothing, and only dropzone's own hashing stands behind the objects."""
    if not isinstance(store, S3Store):
        return Line("checksum", NA, "local folder storage: no server to verify checksums")
    watch, key = Stopwatch(), store.full_key(f".dropzone-check/wrong-checksum-{uuid.uuid4().hex}")
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    try:
        await asyncio.wait_for(store.client.put_object(
            Bucket=store.bucket, Key=key, Body=b"probe", ChecksumSHA256=wrong), 15)
    except Exception as exc:
        return checksum_verdict(exc, watch.ms)
    with suppress(Exception):  # it should not exist; a refused delete leaves a 5-byte probe
        await store.client.delete_object(Bucket=store.bucket, Key=key)
    return checksum_verdict(None, watch.ms)


def checksum_verdict(refusal: BaseException | None, ms: float | None = None) -> Line:
    """ok when the body was refused for its checksum; warn when it was stored anyway."""
    code = getattr(refusal, "response", {}).get("Error", {}).get("Code", "")
    if code in CHECKSUM_REFUSALS:
        return Line("checksum", OK, f"the store verifies x-amz-checksum-sha256 (a wrong one "
                    f"was refused: {code})", ms)
    if refusal is not None:
        return Line("checksum", NA, f"could not tell ({describe(refusal)})", ms)
    return Line("checksum", WARN, "the store accepted a body whose x-amz-checksum-sha256 was "
                "wrong: it does not verify checksums, so a corrupted upload would go unnoticed "
                "by the server", ms)


def clock_verdict(skew_s: float, ms: float | None = None) -> Line:
    """`skew_s`: the endpoint's time minus ours. ok within 5 s, warn up to 15 min, then FAIL."""
    off = abs(skew_s)
    side = "behind" if skew_s > 0 else "ahead of"
    found = f"this clock is {off:.0f} s {side} the S3 endpoint's (its Date header)"
    if off > SKEW_FAIL_S:
        return Line("clock", FAIL, f"{found}: S3 refuses requests signed more than 15 min off"
                    "\nsynchronise the clock (chrony, systemd-timesyncd or ntpd)", ms, EXIT_CLOCK)
    if off > SKEW_WARN_S:
        return Line("clock", WARN, f"{found}; at 15 min S3 starts refusing requests"
                    "\nsynchronise the clock (chrony, systemd-timesyncd or ntpd)", ms, EXIT_CLOCK)
    return Line("clock", OK, f"within {off:.0f} s of the S3 endpoint's (its Date header)", ms,
                EXIT_CLOCK)


# -- mlflow -----------------------------------------------------------------------------------

async def mlflow_lines(settings: Settings) -> list[Line]:
    watch = Stopwatch()
    problem = store_problem(settings.mlflow)
    if problem is not None:  # says what to do itself: MLFLOW_HINT would mislead
        return [Line("mlflow", FAIL, problem, watch.ms)]
    tracking = Tracking(settings.mlflow, settings.state_dir)
    try:
        experiment = await probe_mlflow(tracking, RetryPolicy(attempts=2, deadline_s=30))
    except Exception as exc:
        return [failed("mlflow", exc, watch, MLFLOW_HINT)]
    finally:
        tracking.close()
    return [Line("mlflow", OK, f"{settings.mlflow.tracking_uri}: experiment "
                 f"'{settings.mlflow.experiment}' (id {experiment}) writable", watch.ms)]


# -- zone folders -----------------------------------------------------------------------------

def os_access(path: Path, mode: int) -> bool:
    """os.access with the effective ids where the platform allows (as the daemon would act)."""
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


def user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def folder_problem(path: Path, need: int, access: Access) -> str | None:
    """Why this user could not use the folder at `path` as the daemon does, or None."""
    if not os.path.lexists(path):
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is not a folder"
    lacking = [word for bit, word in RIGHTS if need & bit and not access(path, bit)]
    return f"{path}: no {', '.join(lacking)} permission for {user()}" if lacking else None


def creatable_problem(path: Path, access: Access) -> str | None:
    """None if `path` is a folder this user can write into, or can create."""
    parent = path
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    if parent == path:
        return folder_problem(path, WX, access)
    problem = folder_problem(parent, WX, access)
    return f"{path} cannot be created: {problem}" if problem else None


def _side_state(path: Path) -> str:
    return "writable" if path.is_dir() else "will be created"


def zone_line(zone: ZoneSettings, access: Access = os_access) -> Line:
    """The zone folder must be readable, writable and enterable (files are moved out of it);
    its quarantine folder, and its done folder if files are moved there, writable or
    creatable."""
    sides = [("quarantine", zone.quarantine_dir)]
    if zone.after == "move":
        sides.insert(0, ("done", zone.done_dir))
    problems = [folder_problem(zone.path, RWX, access),
                *(creatable_problem(path, access) for _, path in sides)]
    found = [p for p in problems if p]
    if found:
        return Line("zone", FAIL, f"{zone.name}: {'; '.join(found)}\n{ZONE_HINT}",
                    code=EXIT_ZONE)
    state = ", ".join(f"{name} {path} {_side_state(path)}" for name, path in sides)
    return Line("zone", OK, f"{zone.name}: {zone.path} readable and writable by {user()}; "
                f"{state}", code=EXIT_ZONE)


async def zone_lines(settings: Settings) -> list[Line]:
    return [zone_line(zone) for zone in settings.zones]


# -- the command ------------------------------------------------------------------------------

GROUPS: tuple[Callable[[Settings], Awaitable[list[Line]]], ...] = (
    database_lines, objects_lines, mlflow_lines, zone_lines)


async def run(settings: Settings) -> int:
    """Every check, each group's lines printed as soon as they are known."""
    lines: list[Line] = []
    for group in GROUPS:
        for line in await group(settings):
            print(line.render(), flush=True)
            lines.append(line)
    return exit_code(lines)
