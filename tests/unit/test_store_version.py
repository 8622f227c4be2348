"""The MLflow store's schema against the installed MLflow's, told without importing MLflow."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from daemon import tracking
from daemon.config import MlflowSettings
from daemon.errors import Misconfigured
from daemon.retry import is_transient, translate


def test_installed_migrations_agree_with_mlflow_itself() -> None:
    """The head revision read from MLflow's scripts as text is the one MLflow computes."""
    from mlflow.store.db.utils import _get_latest_schema_revision
    from mlflow.version import VERSION

    found = tracking.installed_migrations()
    assert found is not None
    assert (found.version, found.head) == (VERSION, _get_latest_schema_revision())  # type: ignore[no-untyped-call]
    assert found.head in found.known and len(found.known) > 50


def test_only_a_sqlite_store_with_an_unknown_revision_is_a_problem(tmp_path: Path) -> None:
    """No store yet, a store at a known revision, or a server: fine; an unknown revision: the
    one-line refusal."""
    store = tmp_path / "mlflow.db"
    settings = MlflowSettings(tracking_uri=f"sqlite:///{store}")
    assert tracking.store_problem(settings) is None
    known = tracking.installed_migrations()
    assert known is not None
    with closing(sqlite3.connect(store)) as db, db:
        db.execute("CREATE TABLE alembic_version (version_num varchar(32) NOT NULL)")
        db.execute("INSERT INTO alembic_version VALUES (?)", (known.head,))
    assert tracking.store_problem(settings) is None
    with closing(sqlite3.connect(store)) as db, db:
        db.execute("UPDATE alembic_version SET version_num = 'abcdef012345'")
    problem = tracking.store_problem(settings)
    assert problem is not None and "\n" not in problem
    assert "abcdef012345" in problem and known.version in problem and known.head in problem
    assert tracking.store_problem(MlflowSettings(tracking_uri="http://mlflow:5000")) is None


class MlflowException(Exception):  # stands in for MLflow's: classified by its module's name
    error_code = "INTERNAL_ERROR"


MlflowException.__module__ = "mlflow.exceptions"


def test_mlflows_own_schema_mismatch_is_not_retried() -> None:
    """MLflow's 'out-of-date database schema' (a database store we do not read ourselves) is
    a setup problem: not retried, the breaker says it refuses."""
    exc = MlflowException("Detected out-of-date database schema (found version a, but "
                          "expected b). Take a backup of your database, then run 'mlflow db "
                          "upgrade <database_uri>'")
    assert not is_transient(exc)
    assert isinstance(translate(exc, "mlflow"), Misconfigured)
    assert is_transient(MlflowException("Max retries exceeded"))
