"""`check`'s clock and checksum lines against a real S3 endpoint (SeaweedFS)."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest

from daemon.commands.check import NA, OK, WARN, checksum_line, checksum_verdict, clock_line
from daemon.config import StorageSettings
from daemon.objectstore import open_store
from tests.helpers import free_port


@pytest.mark.parametrize("bucket_exists", [True, False], ids=["bucket", "no-such-bucket"])
async def test_the_clock_is_read_from_any_s3_answer(s3_endpoint: str, bucket: str,
                                                    bucket_exists: bool) -> None:
    """The Date header of S3's answer is compared, even of a refusal (a skewed clock gets one)."""
    name = bucket if bucket_exists else f"{bucket}-missing"
    storage = StorageSettings(url=f"s3://{name}/p", endpoint_url=s3_endpoint)
    async with AsyncExitStack() as stack:
        line = await clock_line(await open_store(storage, stack))
    assert line.status == OK and "of the S3 endpoint's" in line.detail, line


async def test_an_unreachable_endpoint_leaves_the_clock_unknown() -> None:
    """No answer at all: the clock line is n/a (the objects line says what failed)."""
    storage = StorageSettings(url="s3://b/p", endpoint_url=f"http://127.0.0.1:{free_port()}")
    async with AsyncExitStack() as stack:
        line = await clock_line(await open_store(storage, stack))
    assert line.status == NA and "did not answer" in line.detail


async def test_check_sees_the_server_refuse_a_wrong_checksum(s3_endpoint: str,
                                                             bucket: str) -> None:
    """SeaweedFS refuses a body whose x-amz-checksum-sha256 is wrong, and nothing is stored."""
    storage = StorageSettings(url=f"s3://{bucket}/p", endpoint_url=s3_endpoint)
    async with AsyncExitStack() as stack:
        store = await open_store(storage, stack)
        line = await checksum_line(store)
        assert line.status == OK and "BadDigest" in line.detail, line
        assert await store.list_keys("") == []


def test_a_store_that_accepts_a_wrong_checksum_is_a_warning() -> None:
    """An endpoint that stored the wrong-checksum body is said not to verify checksums."""
    line = checksum_verdict(None)
    assert line.status == WARN and "does not verify" in line.detail
