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
    real = tmp_path.resolve()
    assert problems(nested, tmp_path) == [f"zones: zones 'a' and 'b' overlap ({real}/in and "
                                          f"{real}/in/sub, symlinks resolved)"]



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


@pytest.mark.parametrize(("patch", "expected"), [
    ({"state_dir": "in/var"}, "zones[0].path: contains the state dir"),
    ({"storage": {"url": "in/objects"}}, "zones[0].path: contains the object store folder"),
    ({"storage": {"url": "file://{tmp}/in/objects"}},
     "zones[0].path: contains the object store folder"),
    ({"mlflow": {"tracking_uri": "sqlite:///in/m.db"}},
     "zones[0].path: contains the MLflow database"),
    ({"mlflow": {"tracking_uri": "file://{tmp}/in/mlruns"}},
     "zones[0].path: contains the MLflow store"),
    ({"mlflow": {"tracking_uri": "http://mlflow:5000", "artifact_location": "file://{tmp}/in/a"}},
     "zones[0].path: contains the MLflow artifact folder"),
    ({"zones": [{"name": "docs", "path": "in", "done_dir": "in/done"}]},
     "zones[0].path: contains the done folder of zone 'docs'"),
    ({"zones": [{"name": "docs", "path": "in"},
                {"name": "b", "path": "b", "quarantine_dir": "in/q"}]},
     "zones[0].path: contains the quarantine folder of zone 'b'"),
    ({"database": {"url": "postgresql://u@h/db", "password_file": "in/pw"}},
     "zones[0].path: contains the database password file"),
    ({"state_dir": "."}, "zones[0].path: lies inside the state dir"),
    ({"storage": {"url": "."}}, "zones[0].path: lies inside the object store folder"),
    ({"zones": [{"name": "docs", "path": "in", "done_dir": "."}]},
     "zones[0].path: lies inside the done folder of zone 'docs'"),
])
def test_a_zone_may_not_hold_the_daemons_own_files(tmp_path: Path, patch: dict[str, Any],
                                                   expected: str) -> None:
    """A zone that holds (or lies inside) the state dir, the object store, MLflow's files, a
    done or quarantine folder or a password file is refused: it would ingest its own output."""
    (tmp_path / "b").mkdir()
    patch = yaml.safe_load(yaml.safe_dump(patch).replace("{tmp}", str(tmp_path)))
    found = problems({**minimal(tmp_path), **patch}, tmp_path)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_a_zone_may_not_hold_its_config_file(tmp_path: Path) -> None:
    """`path: .` next to the config file is refused: the daemon would move its own config."""
    path = tmp_path / "c.yaml"
    path.write_text("state_dir: /nonexistent/var\nzones:\n  - {name: docs, path: .}\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path, env={})
    assert caught.value.problems == [f"zones[0].path: contains the config file ({path.resolve()}):"
                                     " the daemon would ingest its own files; keep them apart"]


def test_symlinks_do_not_hide_an_overlap(tmp_path: Path) -> None:
    """A zone given as a symlink to another zone's folder, or a state dir reached through a
    symlink into a zone, is refused like the real path would be."""
    (tmp_path / "z" / "var").mkdir(parents=True)
    (tmp_path / "zlink").symlink_to("z")
    (tmp_path / "vlink").symlink_to("z/var")
    twice = {"zones": [{"name": "a", "path": "z"}, {"name": "b", "path": "zlink"}]}
    real = (tmp_path / "z").resolve()
    assert problems(twice, tmp_path) == [f"zones: zones 'a' and 'b' overlap ({real} and {real}, "
                                         "symlinks resolved)"]
    state = {"state_dir": "vlink", "zones": [{"name": "a", "path": "z"}]}
    assert problems(state, tmp_path)[0].startswith("zones[0].path: contains the state dir")


def test_a_zone_given_as_a_symlink_watches_the_real_folder(tmp_path: Path) -> None:
    """A symlinked zone is legitimate: it is resolved at load, and the real folder is watched."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    settings = config.parse({"zones": [{"name": "a", "path": "link"}]}, tmp_path, {})
    assert settings.zones[0].path == (tmp_path / "real").resolve()


def test_check_refuses_a_state_dir_inside_a_zone(tmp_path: Path) -> None:
    """`check` on a config whose state dir is inside a zone: one line naming the zone, exit 2."""
    (tmp_path / "z").mkdir()
    path = tmp_path / "c.yaml"
    path.write_text("state_dir: z/var\nzones:\n  - {name: a, path: z}\n")
    result = subprocess.run([sys.executable, "-m", "daemon", "check", "--config", str(path)],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("dropzone: config error: zones[0].path: contains the state dir ("
                           f"{tmp_path.resolve()}/z/var)"), line
    assert result.stdout == ""


@pytest.mark.parametrize(("template", "expected"), [
    ("{found:%Y%m%d_%H%M%S}/{doc_type}/{name}", "must contain {sha256}"),
    ("{sha256:.8}/{name}", "{sha256:.8}: only {found} takes a format"),
    ("{sha256!r}", "{sha256!r}: no conversions"),
    ("{found:%c}/{sha256}", "{found:%c}: a time format may use"),
    ("{found.year}/{sha256}", "unknown field {found.year}"),
])
def test_key_template_refusals(tmp_path: Path, template: str, expected: str) -> None:
    """A template that could give two contents one key, or render unsafe text, is refused."""
    found = problems(minimal(tmp_path, storage={"url": "s3://b", "key_template": template}),
                     tmp_path)
    assert found[0].startswith(f"storage.key_template: {expected}"), found


def test_key_template_may_use_the_found_time(tmp_path: Path) -> None:
    """The original guide's layout, with the content hash that keeps keys apart, loads."""
    template = "dropzones/{found:%Y%m%d_%H%M%S}/{doc_type}/{sha256}/{name}"
    data = minimal(tmp_path, storage={"url": "s3://b", "key_template": template})
    assert config.parse(data, tmp_path, {}).storage.key_template == template
