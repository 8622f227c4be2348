"""Retry classification and policy: only transient errors are retried, and never forever."""

from __future__ import annotations

import errno

import aiohttp
import asyncpg
import pytest
from aiohttp.client_reqrep import ConnectionKey
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from daemon.errors import FileVanished, Misconfigured, PermanentError, TransientError
from daemon.retry import RetryPolicy, describe, is_transient, translate
from daemon.s3put import error_from


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code.lower()},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


class FakeMlflowError(Exception):
    __module__ = "mlflow.exceptions"

    def __init__(self, message: str, error_code: str) -> None:
        super().__init__(message)
        self.error_code = error_code


class FakeRequestsConnectionError(OSError):
    __module__ = "requests.exceptions"


@pytest.mark.parametrize(("exc", "transient"), [
    (client_error("SlowDown", 503), True),
    (client_error("Throttling", 400), True),
    (client_error("InternalError", 500), True),
    (client_error("Whatever", 502), True),
    (client_error("AccessDenied", 403), False),
    (client_error("NoSuchBucket", 404), False),
    (client_error("InvalidAccessKeyId", 403), False),
    (client_error("NotImplemented", 501), False),
    (client_error("KMSNotConfigured", 501), False),
    (client_error("Whatever", 501), False),
    (EndpointConnectionError(endpoint_url="http://x"), True),
    (NoCredentialsError(), False),
    (asyncpg.SerializationError("x"), True),
    (asyncpg.DeadlockDetectedError("x"), True),
    (asyncpg.TooManyConnectionsError("x"), True),
    (asyncpg.CannotConnectNowError("x"), True),
    (asyncpg.AdminShutdownError("x"), True),
    (asyncpg.UniqueViolationError("x"), False),
    (asyncpg.InsufficientPrivilegeError("x"), False),
    (asyncpg.DataError("x"), False),
    (asyncpg.InterfaceError("connection is closed"), True),
    (asyncpg.InterfaceError("cannot perform operation: another operation is in progress"), True),
    (asyncpg.exceptions.InternalClientError("cannot switch to state 15"), True),
    (ConnectionRefusedError(), True),
    (TimeoutError(), True),
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EACCES, "Permission denied"), False),
    (FakeMlflowError("API request failed: Max retries exceeded", "INTERNAL_ERROR"), True),
    (FakeMlflowError("bad param", "INVALID_PARAMETER_VALUE"), False),
    (FakeRequestsConnectionError("refused"), True),
    (aiohttp.ClientConnectorError(ConnectionKey("h", 1, False, True, None, None, None),
                                  OSError(errno.ECONNREFUSED, "refused")), True),
    (aiohttp.ServerDisconnectedError(), True),
    (aiohttp.ClientPayloadError("body cut short"), True),
    (error_from(503, "<Error><Code>SlowDown</Code><Message>m</Message></Error>"), True),
    (error_from(403, "<Error><Code>AccessDenied</Code></Error>"), False),
    (TransientError("x"), True),
    (PermanentError("x"), False),
    (FileVanished("gone"), False),
    (ValueError("bug"), False),
])
def test_classification(exc: BaseException, transient: bool) -> None:
    """Each error kind is classified as the table says."""
    assert is_transient(exc) is transient


def test_translate_keeps_the_operation_and_the_code() -> None:
    """A translated error says what failed and why, in one line."""
    error = translate(client_error("AccessDenied", 403), "put k")
    assert isinstance(error, PermanentError)
    assert str(error) == "put k: AccessDenied: accessdenied"
    assert describe(ValueError("a\nb")) == "ValueError: a b"


def test_a_feature_the_server_lacks_is_misconfigured() -> None:
    """MinIO without a KMS answers an aws:kms PUT with 501: no retry will change that."""
    error = translate(client_error("KMSNotConfigured", 501), "put k")
    assert isinstance(error, Misconfigured)


async def test_transient_errors_are_retried_until_success() -> None:
    """A call failing twice with a transient error then succeeding returns its value."""
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset")
        return "ok"

    assert await RetryPolicy(attempts=5, base_s=0.001, max_s=0.01).call("op", flaky) == "ok"
    assert len(calls) == 3


async def test_permanent_errors_are_not_retried() -> None:
    """AccessDenied is raised at once, as a PermanentError, after a single call."""
    calls = []

    async def denied() -> None:
        calls.append(1)
        raise client_error("AccessDenied", 403)

    with pytest.raises(PermanentError, match="AccessDenied"):
        await RetryPolicy(attempts=5, base_s=0.001).call("put", denied)
    assert len(calls) == 1


async def test_retries_are_bounded() -> None:
    """A dependency that stays down ends in a TransientError after `attempts` calls."""
    calls = []

    async def down() -> None:
        calls.append(1)
        raise ConnectionRefusedError("refused")

    with pytest.raises(TransientError, match="refused"):
        await RetryPolicy(attempts=4, base_s=0.001, max_s=0.01).call("get", down)
    assert len(calls) == 4


async def test_our_own_error_is_not_made_its_own_cause() -> None:
    """A DaemonError raised inside a policy comes out as itself, not as its own __cause__
    (a cause chain that loops hung the pipeline's walk over it)."""
    from daemon.errors import Misconfigured
    from daemon.pipeline import _vanished

    async def refused() -> None:
        raise Misconfigured("finish: Permission denied")

    with pytest.raises(Misconfigured) as caught:
        await RetryPolicy(attempts=1).call("finish", refused)
    assert caught.value.__cause__ is not caught.value
    looped = Misconfigured("x")
    looped.__cause__ = looped
    assert _vanished(looped) is None
