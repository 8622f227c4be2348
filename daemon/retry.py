"""Retry policies, and the one place that decides whether an error is worth retrying.

Driver errors are classified here (`classify`), then translated into `TransientError` or
`PermanentError` (`translate`) so nothing above `sessions` ever sees a botocore or asyncpg
exception. Only transient errors are retried, with full jitter, a bounded number of attempts
and a deadline; the SDKs' own retries are switched off where we set them up, so layers never
multiply.
"""

from __future__ import annotations

import errno
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
from botocore import exceptions as boto
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from daemon.errors import (
    DaemonError,
    DependencyDown,
    Misconfigured,
    PermanentError,
    TransientError,
)
from daemon.logs import get_logger, outage_began, outage_ended

T = TypeVar("T")
log = get_logger("dropzone.retry")

TRANSIENT_S3_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled", "SlowDown",
    "RequestLimitExceeded", "TooManyRequestsException", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "ServiceUnavailable", "Unavailable", "BadGateway", "GatewayTimeout",
    "OperationAborted", "PriorRequestNotComplete", "500", "502", "503", "504",
})
# the bucket, the credentials or the key policy is wrong: every request will fail the same way
MISCONFIGURED_S3_CODES = frozenset({
    "NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "InvalidBucketName", "AllAccessDisabled", "AccountProblem", "ExpiredToken", "InvalidToken",
    "AuthorizationHeaderMalformed", "PermanentRedirect", "InvalidRequest",
    "KMS.NotFoundException", "KMS.DisabledException", "KMS.AccessDeniedException",
    "KMS.KMSInvalidStateException", "KMSAccessDenied",
    # a 501: the server lacks what the request asks for (MinIO: aws:kms without a KMS)
    "NotImplemented", "KMSNotConfigured",
})
# invalid authorization (bad password, no such role), insufficient privilege, undefined database
MISCONFIGURED_SQLSTATES = ("28", "42501", "3D000")
MISCONFIGURED_MLFLOW_CODES = frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED"})
MLFLOW_SCHEMA_MISMATCH = "Detected out-of-date database schema"
# connection exception, transaction rollback (serialization, deadlock), insufficient resources
# (too many connections), operator intervention (shutdown, cancel), system error
TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EAGAIN, errno.EIO})
TRANSIENT_MLFLOW_CODES = frozenset({
    "TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED", "ABORTED",
})
_TRANSIENT_BOTO = (boto.HTTPClientError, boto.ConnectionError, boto.ReadTimeoutError,
                   boto.ConnectTimeoutError, boto.EndpointConnectionError)


def _s3_is_transient(exc: boto.ClientError) -> bool:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return error.get("Code") in TRANSIENT_S3_CODES or (status >= 500 and status != 501) or (
        status == 429)


def _mlflow_is_transient(exc: BaseException) -> bool:
    code = str(getattr(exc, "error_code", ""))
    return not _mlflow_store_mismatch(exc) and (
        code in TRANSIENT_MLFLOW_CODES or "Max retries exceeded" in str(exc))


def _mlflow_store_mismatch(exc: BaseException) -> bool:
    """MLflow's database store was made by another MLflow version (INTERNAL_ERROR, which we
    would retry forever): someone must upgrade the store or MLflow, as the message says."""
    return type(exc).__module__.startswith("mlflow") and MLFLOW_SCHEMA_MISMATCH in str(exc)


def _foreign_is_transient(exc: BaseException) -> bool:
    """Errors from libraries we do not import here (requests, aiohttp, sqlalchemy, MLflow)."""
    module, name = type(exc).__module__, type(exc).__name__
    if module.startswith("mlflow"):
        return _mlflow_is_transient(exc)
    if module.startswith(("requests", "urllib3", "aiohttp")):
        return any(word in name for word in ("Connect", "Timeout", "ClientOSError", "Payload",
                                             "ServerDisconnected", "ChunkedEncoding"))
    return module.startswith("sqlalchemy") and name == "OperationalError"


def _sqlstate_is_transient(exc: BaseException) -> bool:
    return str(getattr(exc, "sqlstate", "") or "").startswith(TRANSIENT_SQLSTATE_CLASSES)


def _os_is_transient(exc: BaseException) -> bool:
    """Disk full or read-only: an operator can fix it; requests' errors are OSErrors too."""
    return getattr(exc, "errno", None) in TRANSIENT_ERRNOS or _foreign_is_transient(exc)


_RULES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...],
                    Callable[[Any], bool]], ...] = (
    (DaemonError, lambda exc: isinstance(exc, TransientError)),
    (boto.ClientError, _s3_is_transient),
    # asyncpg's client-side errors come from a connection that broke (its state machine left
    # "in progress" by a connection lost mid-COPY, say): retry on a fresh connection. We never
    # share a connection between tasks, so they are not the programming errors they can be.
    ((asyncpg.exceptions.InterfaceError, asyncpg.exceptions.InternalClientError),
     lambda exc: True),
    (asyncpg.PostgresError, _sqlstate_is_transient),
    ((*_TRANSIENT_BOTO, TimeoutError, ConnectionError), lambda exc: True),
    (OSError, _os_is_transient),
)


def is_transient(exc: BaseException) -> bool:
    """True when trying the same thing again later may succeed."""
    for kinds, rule in _RULES:
        if isinstance(exc, kinds):
            return rule(exc)
    return _foreign_is_transient(exc)


def describe(exc: BaseException) -> str:
    """One line naming what went wrong, for ledgers, logs and `.error.json` files."""
    if isinstance(exc, boto.ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'ClientError')}: {error.get('Message', '')}".strip(": ")
    if isinstance(exc, DaemonError):
        return str(exc)
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:1000]


def is_misconfigured(exc: BaseException) -> bool:
    """True when the dependency will refuse every request until someone fixes the setup."""
    if isinstance(exc, boto.ClientError):
        return exc.response.get("Error", {}).get("Code") in MISCONFIGURED_S3_CODES
    if isinstance(exc, boto.NoCredentialsError | boto.PartialCredentialsError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return str(getattr(exc, "sqlstate", "") or "").startswith(MISCONFIGURED_SQLSTATES)
    return (str(getattr(exc, "error_code", "")) in MISCONFIGURED_MLFLOW_CODES
            or _mlflow_store_mismatch(exc))


def translate(exc: BaseException, what: str) -> DaemonError:
    """Wrap a driver error into our tree, naming the operation that failed."""
    if isinstance(exc, DaemonError):
        return exc
    if is_misconfigured(exc):
        return Misconfigured(f"{what}: {describe(exc)}")
    kind = TransientError if is_transient(exc) else PermanentError
    return kind(f"{what}: {describe(exc)}")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one call to the outside tries before giving up (full jitter backoff)."""

    attempts: int = 4
    deadline_s: float = 30.0
    base_s: float = 0.2
    max_s: float = 5.0

    def retrying(self, what: str) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.deadline_s),
            wait=wait_random_exponential(multiplier=self.base_s, max=self.max_s),
            retry=retry_if_exception(is_transient),
            before_sleep=_log_retry(what),
            reraise=True,
        )

    async def call(self, what: str, fn: Callable[..., Awaitable[T]], *args: Any,
                   **kwargs: Any) -> T:
        """Run `fn` under this policy; on final failure raise a translated DaemonError."""
        try:
            async for attempt in self.retrying(what):
                with attempt:
                    return await fn(*args, **kwargs)
        except Exception as exc:
            error = translate(exc, what)
            if error is exc:  # ours already: `raise exc from exc` would make it its own cause
                raise
            raise error from exc
        raise AssertionError("unreachable: tenacity either returns or raises")


def _log_retry(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("retrying", what=what, attempt=state.attempt_number,
                    sleep_s=round(state.upcoming_sleep, 3), error=describe(exc) if exc else None)
        for hook in _retry_hooks:
            hook(retry_cause(what, exc))
    return before_sleep


# -- retry causes: what metrics count (see `retries_counted`) -----------------------------------

_retry_hooks: list[Callable[[str], None]] = []
TIMEOUT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "DEADLINE_EXCEEDED"})
THROTTLE_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled", "SlowDown",
    "RequestLimitExceeded", "TooManyRequestsException", "REQUEST_LIMIT_EXCEEDED",
    "RESOURCE_EXHAUSTED", "53300",  # 53300: too many Postgres connections
})
# asyncpg's client-side errors come from a connection that broke (see _RULES)
_CONNECTION_ERRORS = (ConnectionError, boto.ConnectionError, asyncpg.exceptions.InterfaceError,
                      asyncpg.exceptions.InternalClientError)


@contextmanager
def retries_counted(hook: Callable[[str], None]) -> Iterator[None]:
    """While inside, `hook(cause)` hears of every call about to be retried. A call knows only
    its `what` and its policy (no env), so this one module-level hook spares threading a
    metrics object through every signature between the daemon and the SDKs."""
    _retry_hooks.append(hook)
    try:
        yield
    finally:
        _retry_hooks.remove(hook)


def retry_cause(what: str, exc: BaseException | None) -> str:
    """A bounded label for a retry: the operation's family (the first word of `what`: put,
    get, query, transaction, mlflow, probe, ...; never a key) and the error's kind."""
    family = (what.split() or ["other"])[0].lower()
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,23}", family):
        family = "other"
    return f"{family}_{error_kind(exc)}"


def _code(exc: BaseException) -> str:
    """The error's code, whoever raised it: S3's Code, a SQLSTATE or MLflow's error_code."""
    if isinstance(exc, boto.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return str(getattr(exc, "sqlstate", None) or getattr(exc, "error_code", None) or "")


def _status(exc: BaseException) -> int:
    if isinstance(exc, boto.ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


def error_kind(exc: BaseException | None) -> str:
    """timeout, throttled, connection, conflict, server_error or other: few enough to be a
    metric label, telling "the network" from "the service is struggling" from "contention".
    Ours wrap the driver's error: the first cause with a kind names it."""
    seen: set[int] = set()  # a cause chain can loop back on itself
    while exc is not None and id(exc) not in seen:
        kind = _kind_of(exc)
        if kind != "other":
            return kind
        seen.add(id(exc))
        exc = exc.__cause__
    return "other"


def _kind_of(exc: BaseException) -> str:
    code, status, name = _code(exc), _status(exc), type(exc).__name__
    if isinstance(exc, TimeoutError) or "Timeout" in name or code in TIMEOUT_CODES:
        return "timeout"
    if code in THROTTLE_CODES or status == 429:
        return "throttled"
    if isinstance(exc, _CONNECTION_ERRORS) or code.startswith("08") or "Connect" in name:
        return "connection"
    if len(code) == 5 and code.startswith("40"):  # SQLSTATE serialization failure, deadlock
        return "conflict"
    if status >= 500 or code in TRANSIENT_S3_CODES | TRANSIENT_MLFLOW_CODES or code[:2] in (
            "57", "58"):
        return "server_error"
    return "other"


NO_RETRY = RetryPolicy(attempts=1, deadline_s=0.0)


@dataclass
class Breaker:
    """Notices a dependency that is down or refusing, so files wait instead of spending their
    retry budget; after a growing cool-down the next calls try again. One log line when it
    opens, one when it closes, and (daemon.logs.fold) a summary a minute in between.
    `listener` hears of every change (daemon.health writes it where `status` reads it)."""

    name: str
    threshold: int = 3  # consecutive failed calls (each already retried) before it opens
    cooldown_s: float = 2.0
    max_cooldown_s: float = 60.0
    failures: int = 0
    since: float | None = None  # when it opened (monotonic)
    retry_at: float = 0.0
    refused: bool = False  # the dependency answered, and refuses everything (misconfigured)
    reason: str = ""  # the last error that counted (kept once it closes: the last error seen)
    changed_at: float = field(default_factory=time.time)  # wall clock of the last open or close
    listener: Callable[[Breaker], None] | None = field(default=None, repr=False, compare=False)

    @property
    def is_open(self) -> bool:
        return self.since is not None

    def down_s(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since

    def check(self) -> None:
        """Fail fast while open and cooling down."""
        if self.since is not None and time.monotonic() < self.retry_at:
            error = DependencyDown(f"{self.name} unavailable for {self.down_s():.0f} s: "
                                   f"{self.reason}")
            error.dependency = self.name
            raise error

    def succeeded(self) -> None:
        if self.since is not None and time.monotonic() < self.retry_at:
            return  # a call that started before it opened proves nothing
        self.failures = 0
        if self.since is not None:
            log.warning("dependency_recovered", dependency=self.name,
                        down_s=round(self.down_s(), 1), folded=outage_ended(self.name))
            self.since, self.refused, self.changed_at = None, False, time.time()
            self._changed()

    def failed(self, error: DaemonError) -> None:
        self.failures += 1
        refused = isinstance(error, Misconfigured)
        if self.failures < self.threshold and not refused:
            return
        opening, changing = self.since is None, refused != self.refused
        now = time.monotonic()
        self.since, self.refused, self.reason = self.since or now, refused, str(error)
        # probe less often the longer it has been down (not the more callers failed at once)
        cooldown = max(self.cooldown_s, (now - self.since) / 4)
        self.retry_at = now + min(self.max_cooldown_s, 30.0 if refused else cooldown)
        if opening:
            log.error("dependency_refuses" if refused else "dependency_down",
                      dependency=self.name, error=str(error),
                      effect="files wait in their zones; nothing is quarantined for this")
            outage_began(self.name)
            self.changed_at = time.time()
        if opening or changing:
            self._changed()

    def forget(self) -> None:
        """Its sessions are closing: stop folding its lines (this process may go on)."""
        outage_ended(self.name)

    def _changed(self) -> None:
        if self.listener is not None:
            self.listener(self)
