"""One S3 PutObject without the SDK's per-call machinery, for the many small objects.

aiobotocore spends about 5 ms of CPU on each `put_object` (endpoint rules, event hooks, user
agent, parsing); on two cores that is a third of the daemon's work per file. Here the request
is signed by botocore's own SigV4 signer and sent with aiohttp: about 2 ms. The body's SHA-256
(the caller's, when it already hashed the file) is signed twice over: as the payload hash in
the signature and as `x-amz-checksum-sha256`, so the store refuses a body that differs from it.

Only for stores with an explicit `endpoint_url` (path-style addressing, as SeaweedFS, MinIO
and Ceph use): AWS itself, and every other call, goes through the SDK. The path goes out
exactly as it was signed (S3 signs the once-encoded path, unnormalised); a redirect is never
followed, since its signature would be for the wrong host or region.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ClientError
from yarl import URL

_XML_FIELD = re.compile(r"<(Code|Message)>(.*?)</\1>", re.DOTALL)


def error_from(status: int, body: str) -> ClientError:
    """The SDK's own error for a refused request, so retries classify it as they always did."""
    fields = dict(_XML_FIELD.findall(body))
    error = {"Code": fields.get("Code", str(status)), "Message": fields.get("Message", "")}
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


def redirect_error(status: int, headers: Mapping[str, str], body: str) -> ClientError:
    """A 3xx as the SDK's `PermanentRedirect` (a configuration error: never retried), naming
    where the store pointed; a 307 too, since following it would need a new signature."""
    said = dict(_XML_FIELD.findall(body)).get("Code", "")
    region = headers.get("x-amz-bucket-region")
    message = (f"HTTP {status} {said}".rstrip() + f" to {headers.get('Location', '(no Location)')}"
               + (f", bucket region {region}" if region else "")
               + ": not followed; storage.endpoint_url or storage.region is wrong for the bucket")
    return ClientError({"Error": {"Code": "PermanentRedirect", "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


class _GivenPayloadAuth(S3SigV4Auth):  # type: ignore[misc]  # botocore has no types
    """S3's SigV4 with the payload hash taken from the request, not recomputed from the body."""

    def payload(self, request: AWSRequest) -> str:
        return str(request.context["payload_sha256"])


class DirectPut:
    """Signed PUTs of whole objects over one pooled aiohttp session."""

    def __init__(self, http: aiohttp.ClientSession, credentials: Any, endpoint: str,
                 region: str) -> None:
        self.http = http
        self.credentials = credentials  # aiobotocore credentials: refreshed when they expire
        self.endpoint = endpoint.rstrip("/")
        self.region = region

    async def put(self, bucket: str, key: str, body: bytes, headers: dict[str, str],
                  sha256: bytes | None = None) -> dict[str, str]:
        """PUT `body` at bucket/key; returns the response headers, names in lower case.
        `sha256` is the body's raw digest when the caller knows it (computed when None)."""
        digest = hashlib.sha256(body).digest() if sha256 is None else sha256
        url = URL(f"{self.endpoint}/{bucket}/{quote(key, safe='/~')}", encoded=True)
        signed = await self._sign(str(url), digest, {
            **headers, "x-amz-checksum-sha256": base64.b64encode(digest).decode()})
        async with self.http.put(url, data=body, headers=signed,
                                 allow_redirects=False) as response:
            return await _answer(response)

    async def _sign(self, url: str, digest: bytes, headers: dict[str, str]) -> dict[str, str]:
        frozen = await self.credentials.get_frozen_credentials()
        request = AWSRequest("PUT", url, headers=headers)
        request.context["payload_sha256"] = digest.hex()
        _GivenPayloadAuth(frozen, "s3", self.region).add_auth(request)
        return dict(request.headers.items())


async def _answer(response: aiohttp.ClientResponse) -> dict[str, str]:
    """A stored object's response headers, names in lower case; else the SDK's error."""
    if response.status == 200:
        await response.read()
        return {name.lower(): value for name, value in response.headers.items()}
    text = await response.text(errors="replace")
    if 300 <= response.status < 400:
        raise redirect_error(response.status, response.headers, text)
    raise error_from(response.status, text)
