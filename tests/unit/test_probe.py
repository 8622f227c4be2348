"""The object-store probe: a refused delete fails `check` but not the daemon's readiness."""

from __future__ import annotations

from typing import Any, cast

import pytest
from botocore.exceptions import ClientError

from daemon.errors import Misconfigured
from daemon.objectstore import ObjectStore, PutResult
from daemon.retry import RetryPolicy
from daemon.sessions import probe_store


class NoDeleteStore:
    """A store whose bucket policy allows put and get but not delete."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def put_bytes(self, key: str, data: bytes) -> PutResult:
        self.objects[key] = data
        return PutResult(url=f"s3://b/{key}", etag="e", sse="AES256")

    async def get(self, key: str) -> bytes:
        return self.objects[key]

    async def delete(self, key: str) -> None:
        error: Any = {"Error": {"Code": "AccessDenied", "Message": "no s3:DeleteObject"}}
        raise ClientError(error, "DeleteObject")


async def test_a_refused_delete_fails_check_but_not_readiness() -> None:
    """`check` (must_delete) says the delete was refused; the daemon's probe leaves the object
    and goes on, since processing files never needs s3:DeleteObject."""
    store = cast(ObjectStore, NoDeleteStore())
    policy = RetryPolicy(attempts=1)
    with pytest.raises(Misconfigured, match="AccessDenied"):
        await probe_store(store, policy)
    put = await probe_store(store, policy, must_delete=False)
    assert put.sse == "AES256"
