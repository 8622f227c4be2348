"""MLflow: the client, in the one process every MLflow call runs in.

Importing MLflow takes 2-3 s of CPU, creating a sqlite store another second, and each run
10-15 ms: in a thread they would take the daemon's GIL from the files. So MLflow lives in a
process of its own, and calls are sent to it. The supervisor starts it once the first files
are stored (or a few seconds in), so on two cores it does not slow the first file down.
MLflow's own HTTP retries are switched off: our retry policy is the only one. Every call has a
deadline (`mlflow.timeout_s`); a process that does not answer by then is killed and replaced,
and the call fails as a transient error (the batch is recorded later).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import sqlite3
import sys
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from daemon import failpoints, liveness, workers
from daemon.config import MlflowSettings
from daemon.errors import DependencyError, Misconfigured, PermanentError, TransientError
from daemon.files import exclusive
from daemon.logs import adopt, credential, get_logger, read_secret
from daemon.retry import translate

T = TypeVar("T")
log = get_logger("dropzone.tracking")
_LOCAL_SCHEMES = ("sqlite:", "file:", "postgresql", "mysql", "mssql")
_worker: Tracking | None = None  # in the MLflow process: its copy of the daemon's Tracking
_made: OrderedDict[frozenset[tuple[str, str]], str] = OrderedDict()  # runs created here
STARTUP_S = 120.0  # the MLflow process's start, before a call's own deadline begins
MADE_KEPT = 20_000  # the newest ones are enough: a retry repeats the call that just failed


def remember(tags: dict[str, str], run_id: str) -> None:
    """In the MLflow process: this run was created here (a retried call must not make another)."""
    _made[frozenset(tags.items())] = run_id
    if len(_made) > MADE_KEPT:
        _made.popitem(last=False)


def made_here(tags: dict[str, str]) -> str | None:
    return _made.get(frozenset(tags.items()))


def replaced() -> bool:
    """In the MLflow process: True if it replaces one that died (whose runs it cannot know)."""
    return _worker is not None and _worker.generation > 1


def token_from_credentials() -> None:
    """MLflow's bearer token handed over by systemd (`LoadCredential=mlflow_token`), put where
    MLflow looks for it ($MLFLOW_TRACKING_TOKEN, unless that is set) and never logged."""
    path = credential("mlflow_token")
    if path is not None and "MLFLOW_TRACKING_TOKEN" not in os.environ:
        os.environ["MLFLOW_TRACKING_TOKEN"] = read_secret(path)


def _init_worker(tracking: Tracking, daemon_pid: int, log_state: Any) -> None:
    global _worker
    workers.setup(daemon_pid, log_state)
    # MLflow prints "View run ... at: URL" to stdout for HTTP stores: not a JSON line
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    token_from_credentials()  # the fork server's environment may predate the daemon's reading
    _worker = tracking


def _run(fn: Callable[[Any, str], T]) -> T:
    """Run `fn` in the MLflow process; its errors come back as ours (MLflow's own exceptions
    do not all survive pickling), classified here where their types are known."""
    assert _worker is not None, "the pool initialiser sets it"
    try:
        return _worker.run(fn)
    except Exception as exc:
        raise translate(exc, "mlflow") from None


def _connect_quietly() -> None:
    try:
        assert _worker is not None, "the pool initialiser sets it"
        _worker.connect()
    except Exception as exc:  # reported again, with retries, by the first real call
        log.warning("mlflow_not_ready", error=str(exc)[:300])


# -- the store's schema against the installed MLflow's (read without importing MLflow) --------

_REVISION = re.compile(r"^revision\b[^=]*=\s*['\"](\w+)['\"]", re.M)
_DOWN_REVISION = re.compile(r"^down_revision\b[^=]*=(.*)$", re.M)
_QUOTED = re.compile(r"['\"](\w+)['\"]")
_VERSION = re.compile(r"^VERSION\s*=\s*['\"]([^'\"]+)['\"]", re.M)


@dataclass(frozen=True)
class Migrations:
    """The installed MLflow's version and the store schema revisions it knows (`head` last)."""

    version: str
    head: str
    known: frozenset[str]


def installed_migrations() -> Migrations | None:
    """Read from MLflow's alembic scripts as text: importing MLflow would cost the daemon's
    process 2-3 s of CPU (see the module docstring). None if they cannot be read."""
    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (root / "store" / "db_migrations" / "versions").glob("*.py"):
        text = script.read_text(encoding="utf-8")
        revision, down = _REVISION.search(text), _DOWN_REVISION.search(text)
        revisions.update([revision.group(1)] if revision else [])
        parents.update(_QUOTED.findall(down.group(1)) if down else [])
    version = _VERSION.search((root / "version.py").read_text(encoding="utf-8"))
    heads = revisions - parents
    if version is None or len(heads) != 1:
        return None
    return Migrations(version.group(1), heads.pop(), frozenset(revisions))


def sqlite_path(tracking_uri: str) -> Path | None:
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith(
        "sqlite:///") else None


def store_revision(path: Path) -> str | None:
    """The schema revision MLflow's migrations wrote into a sqlite store (read only); None if
    there is no store there yet, or it is not one (MLflow itself then says what is wrong)."""
    if not path.is_file():
        return None
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                     timeout=10)) as db:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError:
        return None
    return str(row[0]) if row else None


def store_problem(settings: MlflowSettings) -> str | None:
    """Why the installed MLflow cannot open the configured sqlite store, on one line; None if
    it can, or if only MLflow can tell (a server, another database). An older store is fine:
    `connect` upgrades it."""
    path = sqlite_path(settings.tracking_uri)
    found = store_revision(path) if path is not None else None
    migrations = installed_migrations() if found is not None else None
    if path is None or found is None or migrations is None or found in migrations.known:
        return None
    return newer_store(path, found, migrations)


def newer_store(path: Path, found: str, migrations: Migrations) -> str:
    return (f"mlflow: the store {path} was written by a newer MLflow (schema revision {found}"
            f"); the installed MLflow {migrations.version} knows revisions up to "
            f"{migrations.head}: upgrade MLflow ({sys.executable} -m pip install -U "
            f"'mlflow-skinny>{migrations.version}') or {_way_back(path, migrations)}")


def _way_back(path: Path, migrations: Migrations) -> str:
    """The newest copy `upgrade_sqlite_store` kept that this MLflow can open, if any."""
    kept = sorted((copy for copy in path.parent.glob(f"{path.name}.*.bak")
                   if copy.name.rsplit(".", 2)[-2] in migrations.known),
                  key=lambda copy: copy.stat().st_mtime)
    return f"put back {kept[-1]}, the copy kept before it was upgraded" if kept else (
        "restore a backup of it made before")


def verify_store(settings: MlflowSettings) -> None:
    """Refuse, once and for good, a store this MLflow cannot open: retrying cannot help."""
    problem = store_problem(settings)
    if problem is not None:
        raise DependencyError(problem)


def upgrade_sqlite_store(path: Path) -> None:
    """In the MLflow process: a store written by an older MLflow is migrated to this one's
    schema, as `mlflow db upgrade` does, after a copy of it is kept beside it (`<name>.<old
    revision>.bak`: the way back to the older MLflow). Else MLflow refuses it for good.
    Under the store's lock: two daemons starting at once upgrade it once."""
    with exclusive(path.with_name(f"{path.name}.lock")):
        found, migrations = store_revision(path), installed_migrations()
        if found is None or migrations is None or found == migrations.head:
            return
        if found not in migrations.known:
            raise Misconfigured(newer_store(path, found, migrations))  # files wait
        backup = path.with_name(f"{path.name}.{found}.bak")
        with closing(sqlite3.connect(path)) as source, closing(sqlite3.connect(backup)) as copy:
            source.backup(copy)  # consistent even while another process writes
        _upgrade(path)
    log.warning("mlflow_store_upgraded", store=str(path), revision=found, to=migrations.head,
                mlflow=migrations.version, backup=str(backup))


def _upgrade(path: Path) -> None:
    """What `mlflow db upgrade` does (MLflow's alembic migrations, up to its head)."""
    import sqlalchemy
    from mlflow.store.db.utils import _upgrade_db

    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        _upgrade_db(engine)  # type: ignore[no-untyped-call]
    finally:
        engine.dispose()


def init_sqlite_store(path: Path) -> None:
    """Create a new sqlite store beside its place, then rename it in: a first start killed while
    MLflow creates its tables must not leave a half-made store that MLflow refuses to open."""
    from mlflow.tracking import MlflowClient

    with exclusive(path.with_name(f"{path.name}.lock")):
        if path.exists():
            return
        for stale in path.parent.glob(f".{path.name}.init-*"):
            stale.unlink()
        draft = path.with_name(f".{path.name}.init-{os.getpid()}")
        MlflowClient(tracking_uri=f"sqlite:///{draft}").search_experiments(max_results=1)
        failpoints.hit("mlflow_store_init")
        draft.replace(path)


class Tracking:
    """Owns the MLflow process; `call(fn)` runs `fn(client, experiment_id)` there. `fn` must be
    picklable (a module-level function or a partial of one) and so must its result."""

    def __init__(self, settings: MlflowSettings, state_dir: Path) -> None:
        self.settings = settings
        self.state_dir = state_dir
        token_from_credentials()
        verify_store(settings)
        self.generation = 1  # 1 + how many MLflow processes died or were killed under a call
        self._executor = self._spawn()
        self.warmup: Future[None] | None = None

    def _spawn(self) -> ProcessPoolExecutor:
        """The MLflow process (`workers.context`), started by the first call or `start`."""
        return ProcessPoolExecutor(1, mp_context=workers.context(), initializer=_init_worker,
                                   initargs=(self, *workers.parent_state()))

    @property
    def running(self) -> bool:
        return self.warmup is not None

    async def rest(self) -> None:
        """End the MLflow process between calls (its import holds ~150 MiB); the next call
        starts another. Only while no call runs: its successor may then trust `made_here`,
        since every run the old one made is in the ledger."""
        executor, self._executor, self.warmup = self._executor, self._spawn(), None
        await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    def start(self) -> None:
        """Import MLflow and open the store in the background (once; else the first call
        does it)."""
        if self.warmup is None:
            self.warmup = self._executor.submit(_connect_quietly)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def call(self, fn: Callable[[Any, str], T]) -> T:
        """`fn(client, experiment_id)` in the MLflow process, within `mlflow.timeout_s`."""
        await self._started()
        timeout_s = self.settings.timeout_s
        liveness.moved(timeout_s)  # a bounded call: the batch's claims are kept meanwhile
        executor = self._executor
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.wrap_future(executor.submit(_run, fn))
        except BrokenProcessPool as exc:  # the MLflow process died: a new one for next time
            self._replace(executor)
            raise TransientError(f"the MLflow process died ({exc})") from exc
        except TimeoutError as exc:
            self._replace(executor, kill=True)
            log.warning("mlflow_process_replaced", reason=f"no answer in {timeout_s:g} s")
            raise TransientError(f"mlflow: no answer in {timeout_s:g} s; its process was "
                                 "replaced") from exc

    async def _started(self) -> None:
        """The process's start (MLflow's import, the store opened: seconds, more on a busy
        machine) is not a call's time: wait for it first, up to STARTUP_S. A start that fails
        or takes longer is the call's to report (asyncio.wait raises neither)."""
        self.start()
        assert self.warmup is not None
        liveness.moved(STARTUP_S)
        await asyncio.wait({asyncio.wrap_future(self.warmup)}, timeout=STARTUP_S)

    def _replace(self, executor: ProcessPoolExecutor, kill: bool = False) -> None:
        """A new MLflow process for the next call (once, however many calls saw this one
        fail); `kill`: the old one hangs, and would otherwise never let go of its call."""
        if executor is not self._executor:
            return
        if kill:  # the pool offers no way to stop a running call: end its process
            for process in list(getattr(executor, "_processes", {}).values()):
                process.kill()
        executor.shutdown(wait=False, cancel_futures=True)
        self.generation += 1
        self._executor = self._spawn()
        self.warmup = None

    def __getstate__(self) -> dict[str, Any]:  # what the worker gets: settings, not the pool
        return {"settings": self.settings, "state_dir": self.state_dir,
                "generation": self.generation}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client: Any = None
        self._experiment_id = ""

    # -- in the MLflow process ------------------------------------------------------------------

    def run(self, fn: Callable[[Any, str], T]) -> T:
        if self._client is None:
            self.connect()
        return fn(self._client, self._experiment_id)

    def connect(self) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        from mlflow.tracking import MlflowClient

        adopt("mlflow")
        if self.settings.tracking_uri.startswith("sqlite:///"):
            store = Path(self.settings.tracking_uri.removeprefix("sqlite:///"))
            init_sqlite_store(store)
            upgrade_sqlite_store(store)
        client = MlflowClient(tracking_uri=self.settings.tracking_uri)
        self._experiment_id = self._experiment(client)
        self._client = client

    def _artifact_location(self) -> str | None:
        if self.settings.artifact_location:
            return self.settings.artifact_location
        if self.settings.tracking_uri.startswith(_LOCAL_SCHEMES):
            return (self.state_dir / "mlartifacts").as_uri()
        return None

    def _experiment(self, client: Any) -> str:
        from mlflow.exceptions import MlflowException

        name = self.settings.experiment
        found = client.get_experiment_by_name(name)
        if found is None:
            try:
                return str(client.create_experiment(name, self._artifact_location()))
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = client.get_experiment_by_name(name)
        if found.lifecycle_stage == "deleted":
            raise PermanentError(f"mlflow experiment '{name}' is deleted; restore or rename it")
        return str(found.experiment_id)
