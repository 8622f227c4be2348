"""`status`'s dependency lines, from the health rows of the live daemons."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from daemon.commands.status import render_table, summarize
from daemon.errors import TransientError
from daemon.health import rows
from daemon.retry import Breaker
from tests.helpers import settings_for

EARLY = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
LATE = datetime(2025, 1, 2, 3, 9, 5, tzinfo=UTC)


def row(owner: str, dependency: str, up: bool, error: str | None, since: datetime,
        for_s: float) -> dict[str, object]:
    return {"owner": owner, "dependency": dependency, "up": up, "error": error, "since": since,
            "for_s": for_s}


def test_a_dependency_is_down_if_any_daemon_finds_it_down(tmp_path: Path) -> None:
    """Down in one of two daemons means down, since that daemon saw it go, with its error and
    the files waiting; up everywhere shows the latest change; no rows means unknown."""
    settings = settings_for(tmp_path, "postgresql://u@h/db")
    health = [row("a", "mlflow", True, None, EARLY, 600.0),
              row("b", "mlflow", False, "mlflow: refused", LATE, 300.0),
              row("a", "objects", True, "put k: slow", EARLY, 600.0),
              row("b", "objects", True, None, LATE, 300.0)]
    summary = summarize(settings, [], [], health, {"mlflow": 7})
    deps = summary["dependencies"]
    assert deps["mlflow"] == {"up": False, "last_error": "mlflow: refused",
                              "since": "2025-01-02T03:09:05+00:00", "for_s": 300.0,
                              "daemons": 2, "down_in": 1, "waiting_files": 7}
    assert deps["objects"]["up"] is True and deps["objects"]["last_error"] == "put k: slow"
    assert deps["objects"]["since"] == "2025-01-02T03:09:05+00:00"
    assert deps["postgres"]["up"] is None and deps["postgres"]["daemons"] == 0
    table = render_table(json.loads(json.dumps(summary)))
    mlflow_line = next(line for line in table.splitlines() if line.startswith("mlflow"))
    assert "DOWN" in mlflow_line and "(5 min)" in mlflow_line and "mlflow: refused" in mlflow_line
    assert " 7  " in mlflow_line
    assert "no running daemon reports it" in table


def test_health_rows_are_the_breakers_as_they_are() -> None:
    """What a daemon writes: each breaker's state, its last error and when it last changed."""
    up, down = Breaker("objects"), Breaker("mlflow", threshold=1)
    down.failed(TransientError("mlflow: refused"))
    owner, names, ups, errors, since = rows("me", {"objects": up, "mlflow": down})
    assert (owner, names, ups, errors) == ("me", ["objects", "mlflow"], [True, False],
                                           [None, "mlflow: refused"])
    assert since[1] == datetime.fromtimestamp(down.changed_at, UTC)
    down.forget()


def test_status_json_says_postgres_is_unreachable_when_it_cannot_connect(tmp_path: Path) -> None:
    """When `status` cannot reach Postgres, its JSON says so (one line, no hint) and knows
    nothing else: no zone counts, the other dependencies unknown."""
    from daemon.commands.status import unreachable
    from daemon.errors import DependencyError

    settings = settings_for(tmp_path, "postgresql://u@h:1/db")
    summary = unreachable(settings, DependencyError("postgres: ConnectionRefusedError: no"))
    postgres = summary["dependencies"]["postgres"]
    assert postgres["up"] is False and postgres["last_error"].startswith("cannot use the")
    assert "\n" not in postgres["last_error"]
    assert summary["zones"] == {} and summary["dependencies"]["mlflow"]["up"] is None
