"""`check`'s clock against a real S3 endpoint (SeaweedFS), refusals included."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest

from daemon.commands.check import NA, OK, clock_line
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
