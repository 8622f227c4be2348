"""The one exception tree.

Driver errors (botocore, asyncpg, MLflow, OSError) are translated into these at the boundary
(`daemon.retry.classify`), so the pipeline only ever decides between "try again later" and
"this file cannot be processed".
"""

from __future__ import annotations

# Exit codes of every command, beside the errors they report (arq-style `--check` codes).
EXIT_OK = 0
EXIT_QUARANTINED = 1  # --once: some files were quarantined (the rest are stored)
EXIT_USAGE = 2  # the command line or the config is wrong
EXIT_DEPENDENCY = 3  # a dependency could not be reached, refused, or stayed away
EXIT_INTERRUPTED = 130  # stopped by a signal before the work was done (as a shell says SIGINT)


class DaemonError(Exception):
    """Base of every error the daemon raises on purpose."""

    dependency: str | None = None  # "objects", "postgres" or "mlflow" when one of them failed


class ConfigError(DaemonError):
    """The configuration is unusable; each problem is `key.path: reason`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class UsageError(DaemonError):
    """The command line asks for something that cannot be done (one line says what)."""


class TransientError(DaemonError):
    """Worth retrying: a dependency was unreachable, throttled or busy."""


class PermanentError(DaemonError):
    """Retrying cannot help: bad input, a file too large, a file that cannot be read."""


class Misconfigured(PermanentError):
    """The dependency refuses every request (no such bucket, access denied, bad password).

    Not the file's fault: files wait, untouched, until the configuration is fixed.
    """


class DependencyDown(TransientError):
    """The dependency is known to be down; the call was not even tried."""


class DependencyError(DaemonError):
    """A dependency could not be reached or set up at start (exit code 3)."""


class LeaseLost(DaemonError):
    """Another worker took over this file's claim; stop touching it."""


class FileVanished(DaemonError):
    """The source file was deleted (`vanished`) or changed (`superseded`) under the daemon."""

    def __init__(self, message: str, outcome: str = "vanished") -> None:
        super().__init__(message)
        self.outcome = outcome
