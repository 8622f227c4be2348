"""The direct PUT path (daemon/s3put.py) against a server that verifies SigV4 and checksums.

Every object goes up through `DirectPut` as the daemon builds it (`_direct_put`) and is read
back through the SDK, so a quoting or signing slip shows up as a refused PUT, a different key
or different bytes. Redirects and timeouts are held against small aiohttp servers that do what
SeaweedFS never does: answer 307, hang, or answer slowly.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aioboto3
import aiohttp
import boto3
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from botocore.config import Config
from botocore.exceptions import ClientError

from daemon.config import StorageSettings
from daemon.errors import Misconfigured
from daemon.objectstore import _direct_put
from daemon.retry import translate
from daemon.s3put import DirectPut
from tests.conftest import AWS_ENV
from tests.seaweed import SeaweedFS

ODD = ["=", "!", "'", "(", ")", "*", ",", ";", "@", "&", "$", "+", " ", "é", "日本", "😀", "~"]
KEYS = [
    *(f"pre{c}fix/na{c}me{c}.txt" for c in ODD),
    "100%/50% off.txt",  # a bare % (not an escape)
    "a%20b/c%20d%2Fe.txt",  # %20 and %2F literally, not a space or a slash
]
KMS_KEY = "alias/seaweedfs-default"


def s3_client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@asynccontextmanager
async def direct_put(endpoint: str, session: Any = None,
                     **storage: Any) -> AsyncIterator[DirectPut]:
    """A DirectPut with the daemon's own pool and timeouts (`_direct_put`)."""
    settings = StorageSettings(url="s3://bucket/p", endpoint_url=endpoint, **storage)
    async with AsyncExitStack() as stack:
        direct = await _direct_put(settings, session or aioboto3.Session(), stack)
        assert direct is not None
        yield direct


def stored_keys(endpoint: str, bucket: str) -> list[str]:
    listing = s3_client(endpoint).list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listing.get("Contents", [])]


@pytest.mark.parametrize("key", KEYS, ids=[f"k{i}" for i in range(len(KEYS))])
async def test_odd_keys_go_up_and_read_back_unchanged(s3_endpoint: str, bucket: str,
                                                      key: str) -> None:
    """Each sub-delimiter, space, non-ASCII, `%` and `~` in a prefix or a name: the
    signed PUT is accepted, the stored key is exactly the one given, and so are the bytes."""
    body = uuid.uuid4().bytes * 100
    async with direct_put(s3_endpoint) as direct:
        sent = await direct.put(bucket, key, body, {"Content-Type": "text/plain"})
    digest = hashlib.sha256(body).digest()
    assert sent["etag"].strip('"') == hashlib.md5(body).hexdigest()
    assert stored_keys(s3_endpoint, bucket) == [key]
    got = s3_client(s3_endpoint).get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert got["Body"].read() == body
    assert got["ChecksumSHA256"] == base64.b64encode(digest).decode()


async def test_consecutive_slashes_are_stored_as_the_sdk_stores_them(s3_endpoint: str,
                                                                     bucket: str) -> None:
    """S3 keeps `a//b` as is; SeaweedFS folds it to `a/b` (a filer path), for the SDK's PUT too.
    The direct PUT sends the slashes (test_what_goes_on_the_wire_is_what_was_signed) and must
    land where the SDK's does, readable by the key as given."""
    key = "deep//double///slash.txt"
    s3_client(s3_endpoint).put_object(Bucket=bucket, Key=f"sdk/{key}", Body=b"sdk")
    async with direct_put(s3_endpoint) as direct:
        await direct.put(bucket, f"direct/{key}", b"direct", {})
    sdk_key, direct_key = sorted(stored_keys(s3_endpoint, bucket), reverse=True)
    assert direct_key == sdk_key.replace("sdk/", "direct/", 1)
    got = s3_client(s3_endpoint).get_object(Bucket=bucket, Key=f"direct/{key}")
    assert got["Body"].read() == b"direct"


async def test_given_sha256_is_what_the_store_checks(s3_endpoint: str, bucket: str) -> None:
    """A digest that is not the body's is refused and nothing is stored; the right one, given
    rather than computed, is accepted."""
    body = b"the file the daemon hashed" * 50
    async with direct_put(s3_endpoint) as direct:
        with pytest.raises(ClientError) as refused:
            await direct.put(bucket, "wrong", body, {}, hashlib.sha256(b"another").digest())
        await direct.put(bucket, "right", body, {}, hashlib.sha256(body).digest())
    assert refused.value.response["Error"]["Code"] in (
        "BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"), refused.value.response
    assert stored_keys(s3_endpoint, bucket) == ["right"]


def assume_role(endpoint: str) -> dict[str, str]:
    """Temporary credentials from SeaweedFS's STS: without a RoleArn (so no role to set up) it
    mints a session for the caller itself; boto3 wants a RoleArn, hence no validation."""
    sts = boto3.client("sts", endpoint_url=endpoint, region_name="us-east-1",
                       config=Config(parameter_validation=False))
    credentials: dict[str, str] = sts.assume_role(RoleSessionName="dz-test")["Credentials"]
    return credentials


async def test_temporary_credentials_send_their_token(s3_endpoint: str, bucket: str) -> None:
    """A session token goes up as a signed X-Amz-Security-Token: SeaweedFS accepts the temporary
    key with it, and does not know the key without it."""
    temporary = assume_role(s3_endpoint)
    with_token = aioboto3.Session(aws_access_key_id=temporary["AccessKeyId"],
                                  aws_secret_access_key=temporary["SecretAccessKey"],
                                  aws_session_token=temporary["SessionToken"])
    without = aioboto3.Session(aws_access_key_id=temporary["AccessKeyId"],
                               aws_secret_access_key=temporary["SecretAccessKey"])
    async with direct_put(s3_endpoint, without) as direct:
        with pytest.raises(ClientError, match="InvalidAccessKeyId"):
            await direct.put(bucket, "k", b"x", {})
    async with direct_put(s3_endpoint, with_token) as direct:
        await direct.put(bucket, "k", b"temporary", {})
    assert s3_client(s3_endpoint).get_object(Bucket=bucket, Key="k")["Body"].read() == (
        b"temporary")


@pytest.fixture(scope="module")
def kms_endpoint() -> Iterator[str]:
    """A SeaweedFS with its local KMS, only for the SSE-KMS test."""
    with SeaweedFS(AWS_ENV["AWS_ACCESS_KEY_ID"], AWS_ENV["AWS_SECRET_ACCESS_KEY"],
                   kms=True) as server:
        yield server.endpoint


async def test_sse_kms(kms_endpoint: str) -> None:
    """aws:kms with a key id: the store says it applied it, and the object reads back equal."""
    bucket = f"dz-{uuid.uuid4().hex[:12]}"
    s3_client(kms_endpoint).create_bucket(Bucket=bucket)
    body = b"secret" * 1000
    headers = {"x-amz-server-side-encryption": "aws:kms",
               "x-amz-server-side-encryption-aws-kms-key-id": KMS_KEY}
    async with direct_put(kms_endpoint) as direct:
        sent = await direct.put(bucket, "k", body, headers)
    assert sent["x-amz-server-side-encryption"] == "aws:kms"
    got = s3_client(kms_endpoint).get_object(Bucket=bucket, Key="k")
    assert (got["Body"].read(), got["ServerSideEncryption"]) == (body, "aws:kms")


# -- against small aiohttp servers -------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("")).rstrip("/")


async def test_what_goes_on_the_wire_is_what_was_signed() -> None:
    """The path is sent as signed (not re-quoted by yarl), and the token and both checksums are
    among the signed headers."""
    seen: list[web.Request] = []

    async def record(request: web.Request) -> web.Response:
        await request.read()
        seen.append(request)
        return web.Response()

    credentials = aioboto3.Session(aws_access_key_id="AKID", aws_secret_access_key="secret",
                                   aws_session_token="the-token")
    async with serving(record) as endpoint, direct_put(endpoint, credentials) as direct:
        await direct.put("b", "a=b//c'd (e)%", b"body", {}, hashlib.sha256(b"body").digest())
    request = seen[0]
    assert request.raw_path == "/b/a%3Db//c%27d%20%28e%29%25"
    signed = request.headers["Authorization"].split("SignedHeaders=")[1].split(",")[0]
    assert {"x-amz-security-token", "x-amz-checksum-sha256", "x-amz-content-sha256",
            "host"} <= set(signed.split(";"))
    assert request.headers["X-Amz-Security-Token"] == "the-token"
    assert request.headers["x-amz-content-sha256"] == hashlib.sha256(b"body").hexdigest()


@pytest.mark.parametrize("status", [301, 307])
async def test_redirects_are_not_followed(status: int) -> None:
    """A redirect is a configuration error naming where it pointed; its target never hears a
    request signed for another endpoint."""
    elsewhere: list[str] = []

    async def target(request: web.Request) -> web.Response:
        elsewhere.append(request.path)
        return web.Response()

    async with serving(target) as other:
        async def redirect(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(status=status, headers={
                "Location": f"{other}{request.path}", "x-amz-bucket-region": "eu-west-3"})

        async with serving(redirect) as endpoint, direct_put(endpoint) as direct:
            with pytest.raises(ClientError) as redirected:
                await direct.put("b", "k", b"x", {})
    message = str(redirected.value)
    assert f"HTTP {status}" in message and f"{other}/b/k" in message and "eu-west-3" in message
    assert elsewhere == []
    assert isinstance(translate(redirected.value, "put k"), Misconfigured)


async def test_a_store_that_stops_answering_fails_within_the_read_timeout() -> None:
    """Accepted, then silence: the PUT fails after about `read_timeout_s`, not never."""
    stop = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await request.read()
        await stop.wait()
        return web.Response()

    async with serving(hang) as endpoint, direct_put(endpoint, read_timeout_s=0.5) as direct:
        began = time.monotonic()
        async with asyncio.timeout(5):  # else, without a read timeout, this test hangs
            with pytest.raises(aiohttp.ServerTimeoutError):
                await direct.put("b", "k", b"x", {})
        took = time.monotonic() - began
        stop.set()
    assert 0.4 < took < 2.0, took


async def test_waiting_for_a_pooled_connection_is_not_a_read_timeout() -> None:
    """One pooled connection, each answer 0.4 s away, a 0.5 s read timeout: the third PUT waits
    0.8 s for the connection and still succeeds."""
    busy = 0
    most = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal busy, most
        busy += 1
        most = max(most, busy)
        await request.read()
        await asyncio.sleep(0.4)
        busy -= 1
        return web.Response()

    async with serving(slow) as endpoint, \
            direct_put(endpoint, read_timeout_s=0.5, max_connections=1) as direct:
        began = time.monotonic()
        await asyncio.gather(*(direct.put("b", f"k{i}", b"x", {}) for i in range(3)))
        took = time.monotonic() - began
    assert most == 1 and took >= 1.2, (most, took)
