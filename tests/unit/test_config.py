"""Config: what loads, what is refused and how the refusal reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon import config
from daemon.config import format_loc
from daemon.errors import ConfigError
from tests.helpers import REPO


def minimal(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    (tmp_path / "in").mkdir(exist_ok=True)
    return {"zones": [{"name": "docs", "path": "in"}], **extra}


def problems(data: Any, base: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config.parse(data, base, env or {})
    return caught.value.problems


def test_example_config_loads() -> None:
    """The shipped example is valid, has two zones, and resolves paths against its folder."""
    settings = config.load(REPO / "config" / "drop_zones.yaml", env={})
    assert [z.name for z in settings.zones] == ["documents", "reports", "papers"]
    assert settings.zones[0].path == REPO / "dropzones" / "documents"
    assert settings.state_dir == REPO / "var"
    assert settings.database.url == "embedded"
    assert settings.mlflow.tracking_uri == f"sqlite:///{REPO}/var/mlflow.db"
    assert settings.pipeline.max_file_bytes == 5 * 1024**3


def test_defaults_come_from_the_state_dir(tmp_path: Path) -> None:
    """Without storage/mlflow sections everything lands under the state dir."""
    settings = config.parse(minimal(tmp_path, state_dir="st"), tmp_path, {})
    assert settings.storage.url == str(tmp_path / "st" / "objects")
    assert settings.mlflow.tracking_uri == f"sqlite:///{tmp_path}/st/mlflow.db"
    assert settings.zones[0].done_dir == tmp_path / "st" / "done" / "docs"
    assert settings.zones[0].quarantine_dir == tmp_path / "st" / "quarantine" / "docs"


def test_environment_values_are_expanded(tmp_path: Path) -> None:
    """${VAR} and ${VAR:-default} expand; $$ is a literal dollar."""
    data = minimal(tmp_path, storage={"url": "s3://${BUCKET}/p", "region": "${REGION:-eu-west-1}",
                                      "key_template": "cost$$/{sha256}"})
    settings = config.parse(data, tmp_path, {"BUCKET": "b1"})
    assert settings.storage.bucket == "b1"
    assert settings.storage.region == "eu-west-1"
    assert settings.storage.key_template == "cost$/{sha256}"


def test_missing_environment_variable_names_the_key(tmp_path: Path) -> None:
    """An unset variable without a default is refused with its key path."""
    data = minimal(tmp_path, database={"url": "${DB_URL}"})
    assert problems(data, tmp_path) == ["database.url: environment variable DB_URL is not set"]


@pytest.mark.parametrize(("patch", "expected"), [
    ({"zones": [{"name": "docs", "path": "nope"}]}, "zones[0].path: folder does not exist"),
    ({"zones": [{"name": "Docs!", "path": "in"}]}, "zones[0].name: String should match pattern"),
    ({"zones": []}, "zones: at least one zone is needed"),
    ({"zones": [{"name": "docs", "path": "in", "after": "archive"}]},
     "zones[0].after: Input should be 'move', 'delete' or 'keep'"),
    ({"zones": [{"name": "docs", "path": "in", "colour": "red"}]}, "zones[0].colour: unknown key"),
    ({"zones": [{"path": "in"}]}, "zones[0].name: required"),
    ({"zones": [{"name": "docs", "path": "in", "settle_ms": -1}]},
     "zones[0].settle_ms: Input should be greater than or equal to 0"),
    ({"storage": {"url": "ftp://x/y"}}, "storage.url: must be s3://bucket/prefix"),
    ({"storage": {"url": "s3://"}}, "storage.url: s3:// URL needs a bucket"),
    ({"storage": {"url": "s3://b", "sse": "rot13"}}, "storage.sse: Input should be"),
    ({"storage": {"url": "s3://b", "key_template": "{name}"}},
     "storage.key_template: must contain {sha256}"),
    ({"storage": {"url": "s3://b", "key_template": "{sha256}/{user}"}},
     "storage.key_template: unknown field {user}"),
    ({"database": {"url": "mysql://x"}}, "database.url: must be 'embedded' or postgresql://"),
    ({"mlflow": {"tracking_uri": "just-a-name"}}, "mlflow.tracking_uri: must be a URI"),
    ({"embedding": {"dim": 4}}, "embedding.dim: Input should be greater than or equal to 8"),
    ({"embedding": {"chunk_chars": 200, "chunk_overlap": 150}},
     "embedding: chunk_overlap must be at most half of chunk_chars"),
    ({"pipeline": {"max_file_bytes": "lots"}}, "pipeline.max_file_bytes: could not parse"),
    ({"pipeline": {"workers": 0}}, "pipeline.workers: Input should be greater than or equal to 1"),
    ({"surprise": 1}, "surprise: unknown key"),
])
def test_refusals_name_the_key_and_reason(tmp_path: Path, patch: dict[str, Any],
                                          expected: str) -> None:
    """Each bad value is refused on one line starting with its key path."""
    found = problems({**minimal(tmp_path), **patch}, tmp_path)
    assert any(p.startswith(expected) for p in found), found
    assert all("\n" not in p for p in found)


def test_zone_path_must_be_a_folder(tmp_path: Path) -> None:
    """A file where a zone folder should be is refused."""
    (tmp_path / "file").write_text("x")
    data = {"zones": [{"name": "docs", "path": "file"}]}
    assert problems(data, tmp_path) == ["zones[0].path: not a folder"]


def test_duplicate_and_overlapping_zones_are_refused(tmp_path: Path) -> None:
    """Two zones may not share a name, nor one folder sit inside another's."""
    (tmp_path / "in" / "sub").mkdir(parents=True)
    same = {"zones": [{"name": "a", "path": "in"}, {"name": "a", "path": "in/sub"}]}
    assert problems(same, tmp_path) == ["zones: zone name 'a' is used twice"]
    nested = {"zones": [{"name": "a", "path": "in"}, {"name": "b", "path": "in/sub"}]}
    assert problems(nested, tmp_path) == ["zones: zones 'a' and 'b' overlap"]


def test_byte_sizes_and_relative_sqlite_uris(tmp_path: Path) -> None:
    """`512MiB` parses to bytes; a relative sqlite path resolves against the config folder."""
    data = minimal(tmp_path, pipeline={"max_file_bytes": "512MiB"},
                   mlflow={"tracking_uri": "sqlite:///db/m.db"})
    settings = config.parse(data, tmp_path, {})
    assert settings.pipeline.max_file_bytes == 512 * 1024**2
    assert settings.mlflow.tracking_uri == f"sqlite:///{tmp_path}/db/m.db"


def test_yaml_errors_point_at_line_and_column(tmp_path: Path) -> None:
    """Broken YAML is refused with file:line:column."""
    path = tmp_path / "bad.yaml"
    path.write_text("zones:\n  - name: a\n    path: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path, env={})
    assert caught.value.problems[0].startswith(f"{path}:")
    assert len(caught.value.problems) == 1


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    """A missing file and a file that is not a mapping are refused plainly."""
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "absent.yaml", env={})
    (tmp_path / "list.yaml").write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="must be a mapping"):
        config.load(tmp_path / "list.yaml", env={})


def test_format_loc() -> None:
    """Pydantic locations read as the YAML keys a user wrote."""
    assert format_loc(("zones", 2, "path")) == "zones[2].path"
    assert format_loc(()) == "(top)"


def test_cli_refuses_bad_config_with_one_line_and_exit_2(tmp_path: Path) -> None:
    """`python -m daemon` on a bad config: exit 2, one line on stderr, no traceback."""
    path = tmp_path / "c.yaml"
    path.write_text("zones:\n  - name: docs\n    path: missing\n")
    result = subprocess.run([sys.executable, "-m", "daemon", "--config", str(path), "--once"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "dropzone: config error: zones[0].path: folder does not exist"]
    assert "Traceback" not in result.stdout + result.stderr
