"""Every object holds exactly the bytes its key names, proven by the server (SeaweedFS checks
`x-amz-checksum-sha256` on each PUT and each part) and by our own digest of what was sent."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, BinaryIO

import boto3
import pytest
from botocore.exceptions import ClientError

from daemon.config import StorageSettings
from daemon.errors import FileVanished
from daemon.objectstore import ObjectStore, S3Store, open_store

MIB = 1024 * 1024


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


async def _opened(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "local":
        settings = StorageSettings(url=str(tmp_path / "objects"))
    else:
        endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("bucket")
        settings = StorageSettings(url=f"s3://{bucket}/p", endpoint_url=endpoint,
                                   multipart_threshold="5MiB",
                                   direct_put=request.param == "direct-put")
    async with AsyncExitStack() as stack:
        yield await open_store(settings, stack)


@pytest.fixture(params=["direct-put", "sdk-put", "local"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    """Each way an object is written: the SDK-free PUT, the SDK (and its multipart), a folder."""
    async for opened in _opened(request, tmp_path):
        yield opened


@pytest.fixture(params=["direct-put", "sdk-put"])
async def s3_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[S3Store]:
    async for opened in _opened(request, tmp_path):
        yield opened


def written(path: Path, body: bytes) -> BinaryIO:
    """A file with `body`, opened for reading as the hash stage leaves it."""
    path.write_bytes(body)
    return path.open("rb")


def rewrite_in_place(path: Path, after: bytes) -> None:
    """The file's bytes change under an open handle: same inode, same size."""
    with open(path, "r+b") as out:
        out.write(after)


@pytest.mark.parametrize("size", [300 * 1024, 11 * MIB], ids=["one-put", "multipart"])
async def test_a_file_changed_since_it_was_hashed_leaves_no_object(
        store: ObjectStore, tmp_path: Path, size: int) -> None:
    """The bytes read for the upload hash to something else: superseded, and nothing is left
    under the key (a multipart upload is aborted, not completed)."""
    old, new = os.urandom(size), os.urandom(size)
    with written(tmp_path / "a.bin", old) as handle:
        rewrite_in_place(tmp_path / "a.bin", new)
        with pytest.raises(FileVanished, match="changed since it was hashed") as caught:
            await store.put_stream("k/a.bin", handle, size, sha(old))
    assert caught.value.outcome == "superseded"
    assert await store.list_keys() == []
    if isinstance(store, S3Store):
        uploads = await store.client.list_multipart_uploads(Bucket=store.bucket)
        assert not uploads.get("Uploads")


@pytest.mark.parametrize("size", [1000, 300 * 1024, 11 * MIB],
                         ids=["small", "one-put", "multipart"])
async def test_the_bytes_hashed_are_the_bytes_stored(store: ObjectStore, tmp_path: Path,
                                                     size: int) -> None:
    body = os.urandom(size)
    with written(tmp_path / "a.bin", body) as handle:
        await store.put_stream("k/a.bin", handle, size, sha(body))
    assert await store.get("k/a.bin") == body


def _head(store: S3Store, key: str) -> dict[str, str]:
    client = boto3.client("s3", endpoint_url=store.settings.endpoint_url)
    return client.head_object(Bucket=store.bucket, Key=store.full_key(key),  # type: ignore[no-any-return]
                              ChecksumMode="ENABLED")


async def test_each_put_carries_the_sha256_the_server_checks(s3_store: S3Store) -> None:
    """A PUT whose checksum does not match its body is refused by the server: the header is
    sent, and checked. A right one is kept with the object."""
    store = s3_store
    with pytest.raises(ClientError, match=r"BadDigest|Mismatch|XAmzContentSHA256"):
        await store.put_bytes("k/wrong", b"what was sent", sha(b"what was hashed"))
    assert await store.list_keys() == []
    await store.put_bytes("k/right", b"what was sent", sha(b"what was sent"))
    head = _head(store, "k/right")
    assert head["ChecksumSHA256"] == base64.b64encode(sha(b"what was sent")).decode()


async def test_each_part_carries_the_sha256_the_server_checks(s3_store: S3Store,
                                                              tmp_path: Path) -> None:
    """The object's composite checksum is the SHA-256 of its parts' SHA-256s: the server saw
    (and checked) a checksum on every part."""
    store = s3_store
    body = os.urandom(11 * MIB)
    with written(tmp_path / "a.bin", body) as handle:
        await store.put_stream("k/a.bin", handle, len(body), sha(body))
    parts = [body[:8 * MIB], body[8 * MIB:]]
    composite = base64.b64encode(sha(b"".join(sha(part) for part in parts))).decode()
    assert _head(store, "k/a.bin")["ChecksumSHA256"] == f"{composite}-2"
