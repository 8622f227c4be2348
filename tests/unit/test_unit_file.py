"""systemd/dropzone.service: what systemd says of it, and the promises it makes to the daemon."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest

from daemon import cli
from daemon.config import PipelineSettings
from tests.helpers import REPO

UNIT = REPO / "systemd" / "dropzone.service"
VERIFY = REPO / "systemd" / "verify.sh"
STOP_MARGIN_S = 30.0  # after the grace: claims handed back, workers and Postgres stopped
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY", re.I)
SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|hr)?\s*")
SECONDS_PER = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def unit_lines() -> list[str]:
    return UNIT.read_text(encoding="utf-8").splitlines()


def settings() -> list[tuple[int, str, str]]:
    """(line index, key, value) of every setting, in file order."""
    found = []
    for index, line in enumerate(unit_lines()):
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.append((index, key.strip(), value.strip()))
    return found


def values(key: str) -> list[str]:
    return [value for _, name, value in settings() if name == key]


def environment() -> dict[str, str]:
    """Every assignment of every Environment= line."""
    pairs = [word.partition("=") for value in values("Environment") for word in shlex.split(value)]
    return {name: value for name, _, value in pairs}


def only(key: str) -> str:
    found = values(key)
    assert len(found) == 1, f"{key}= is set {len(found)} times"
    return found[0]


def seconds(span: str) -> float:
    """A systemd time span such as `90s`, `5min` or `1min 30s`, in seconds."""
    parts = SPAN.findall(span)
    assert parts and SPAN.sub("", span) == "", f"not a time span: {span!r}"
    return sum(float(number) * SECONDS_PER[unit or "s"] for number, unit in parts)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian: apt install systemd)")
def test_systemd_verifies_the_unit_and_rates_its_exposure_ok() -> None:
    """verify.sh passes: systemd-analyze verify is silent and the exposure is within its limit."""
    done = subprocess.run([str(VERIFY)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verify: ok" in done.stdout
    score = re.search(r"^exposure: (\d+\.\d+) \(at most (\d+\.\d+)\): ok$", done.stdout, re.M)
    assert score and float(score.group(1)) <= float(score.group(2)) < 5.0  # the "OK" band


def test_the_daemon_tells_systemd_when_it_is_ready_alive_and_reloading() -> None:
    """Type=notify from the main process only, with a watchdog and reload by SIGHUP."""
    assert only("Type") == "notify"
    assert only("NotifyAccess") == "main"
    assert seconds(only("WatchdogSec")) > 0
    assert "HUP" in shlex.split(only("ExecReload"))
    assert "$MAINPID" in only("ExecReload")


def test_failures_restart_but_a_bad_config_does_not() -> None:
    """Restart=on-failure, except exit 2 (a refused configuration)."""
    assert only("Restart") == "on-failure"
    assert "2" in only("RestartPreventExitStatus").split()


def test_stop_waits_longer_than_the_drain_grace_and_signals_only_the_daemon() -> None:
    """TimeoutStopSec outlasts the default drain_grace_s plus a margin; KillMode=mixed."""
    grace_s = PipelineSettings().drain_grace_s
    assert seconds(only("TimeoutStopSec")) >= grace_s + STOP_MARGIN_S
    assert only("KillMode") == "mixed"


def test_exec_start_is_a_daemon_run_with_json_logs() -> None:
    """ExecStart is `python -m daemon` with arguments the daemon's own parser reads as a run."""
    argv = shlex.split(only("ExecStart"))
    assert argv[1:3] == ["-m", "daemon"]
    args = cli.parse_args(argv[3:])
    assert args.command == "run" and not args.once
    assert str(args.config) == "/etc/dropzone/drop_zones.yaml"
    assert args.log_format == "json"


def test_state_directory_reaches_the_config() -> None:
    """StateDirectory=dropzone, passed on as DROPZONE_STATE_DIR for `state_dir:`."""
    assert only("StateDirectory") == "dropzone"
    assert environment()["DROPZONE_STATE_DIR"] == "%S/dropzone"


def test_secrets_come_as_credentials_named_as_the_daemon_reads_them() -> None:
    """LoadCredential= provides db_password, aws_credentials and mlflow_token."""
    ids = {value.split(":", 1)[0] for value in values("LoadCredential")}
    assert {"db_password", "aws_credentials", "mlflow_token"} <= ids
    assert environment()["AWS_SHARED_CREDENTIALS_FILE"] == "%d/aws_credentials"


def test_no_environment_line_carries_a_secret() -> None:
    """No Environment= assignment has a name like PASSWORD, SECRET, TOKEN or KEY."""
    for name in environment():
        assert not SECRET_NAME.search(name), f"Environment={name}=... looks like a secret"


def test_every_setting_has_exactly_one_comment_line_above_it() -> None:
    """Each setting follows one comment line saying why, and not two."""
    lines = unit_lines()
    for index, key, _ in settings():
        assert index > 0 and lines[index - 1].startswith("#"), f"{key}= has no comment above"
        above = lines[index - 2] if index > 1 else ""
        assert not above.startswith("#"), f"{key}= has more than one comment line above"
