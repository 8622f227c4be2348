"""Object storage: `s3://bucket/prefix` and a local folder behind one small interface.

Keys are built here, and only here, from sanitised parts (`object_key`), so whatever a file is
called, its object stays under the configured prefix. Retries live in `sessions`; the S3
client's own retries are off (one attempt per call) so the two layers never multiply.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib
import mimetypes
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from daemon import liveness
from daemon.config import StorageSettings
from daemon.errors import FileVanished, PermanentError
from daemon.files import blocks
from daemon.logs import get_logger

if TYPE_CHECKING:
    from daemon.s3put import DirectPut

log = get_logger("dropzone.objects")

MAX_NAME_BYTES = 200
FOUND_FORMAT = "%Y%m%dT%H%M%SZ"  # `{found}` without a format: ISO 8601 basic, UTC
_UNSAFE_RUN = re.compile(r"_+")
PART_BYTES = 8 * 1024**2  # multipart part size: 128 parts for a 1 GiB file
MAX_PARTS = 10_000  # S3's limit
ABORT_WAIT_S = 10.0
_HEADERS = {"ContentType": "Content-Type", "ServerSideEncryption": "x-amz-server-side-encryption",
            "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id"}


@dataclass(frozen=True)
class PutResult:
    url: str
    etag: str | None
    sse: str | None = None  # the encryption the store says it applied


@dataclass(frozen=True)
class ObjectEntry:
    """One stored object as a listing gives it: its key (relative to the store's root or
    prefix), when it was last written (UTC) and its size."""

    key: str
    modified: datetime
    size: int


class ObjectStore(Protocol):
    """What every store offers; keys are relative to the store's root or prefix."""

    def url(self, key: str) -> str: ...
    def full_key(self, key: str) -> str: ...
    async def put_stream(self, key: str, handle: BinaryIO, size: int,
                         sha256: bytes) -> PutResult: ...
    async def put_bytes(self, key: str, data: bytes, sha256: bytes | None = None) -> PutResult: ...
    async def get(self, key: str) -> bytes: ...
    async def delete(self, key: str) -> None: ...
    async def list_keys(self, prefix: str = "") -> list[str]: ...
    async def list_entries(self, prefix: str = "") -> list[ObjectEntry]: ...


def _safe_char(ch: str) -> str:
    return ch if ch.isalnum() or ch in "._-" else "_"


def _truncate(name: str, limit: int) -> str:
    """Cut to `limit` UTF-8 bytes, keeping the extension."""
    stem, dot, ext = name.rpartition(".") if "." in name[1:] else (name, "", "")
    ext = ext[:16]
    room = limit - len((dot + ext).encode())
    return stem.encode()[:room].decode("utf-8", "ignore") + dot + ext


def sanitize_name(name: str) -> str:
    """A file name safe inside an object key: no separators, controls or leading dots."""
    name = unicodedata.normalize("NFC", name)
    clean = "".join(_safe_char(ch) for ch in name)
    clean = _UNSAFE_RUN.sub("_", clean).lstrip("._") or "file"
    return _truncate(clean, MAX_NAME_BYTES)


def extension(name: str) -> str:
    suffix = PurePosixPath(sanitize_name(name)).suffix
    return suffix[1:].lower()


@dataclass(frozen=True)
class FoundTime:
    """`{found:%Y%m%d}` in a key: when the ledger first saw the file version, always in UTC.

    It comes from the ledger row (`dz_files.discovered_at`), not the clock, so the hash stage
    run again for the same file (a retry, another daemon) computes the same key."""

    at: datetime | None

    def __format__(self, spec: str) -> str:
        if self.at is None:
            raise PermanentError("the key template uses {found} but the file has no found time")
        return self.at.astimezone(UTC).strftime(spec or FOUND_FORMAT)


def object_key(template: str, *, doc_type: str, sha256: str, name: str, zone: str,
               found: datetime | None = None) -> str:
    """The deterministic key of one content; the template is validated by config."""
    safe = sanitize_name(name)
    key = template.format(doc_type=sanitize_name(doc_type), sha256=sha256, name=safe,
                          zone=sanitize_name(zone), ext=extension(name), found=FoundTime(found))
    parts = [p for p in key.split("/") if p not in ("", ".", "..")]
    return "/".join(parts)


def part_bytes(size: int) -> int:
    """PART_BYTES, or whole MiBs more when a file would need more than MAX_PARTS parts."""
    needed = -(-size // MAX_PARTS)
    return max(PART_BYTES, -(-needed // 2**20) * 2**20)


def _read_part(handle: BinaryIO, offset: int, end: int, whole: Verifier) -> tuple[bytes, str]:
    """A part's bytes and their own SHA-256 (base64), fed to the whole stream's digest too;
    run in a thread, so hashing a part never holds the event loop."""
    block = whole.update(b"".join(blocks(handle, end, start=offset)))
    return block, b64(hashlib.sha256(block).digest())


def content_type(name: str) -> str:
    return mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"


class Verifier:
    """The SHA-256 of the bytes actually sent, checked against the one the key was named
    for before the object is made visible: a file changed since it was hashed is never
    stored under its old content's key."""

    def __init__(self, expected: bytes) -> None:
        self.expected = expected
        self.sha = hashlib.sha256()

    def update(self, block: bytes) -> bytes:
        self.sha.update(block)
        liveness.moved()
        return block

    def check(self) -> None:
        if self.sha.digest() != self.expected:
            raise FileVanished("changed since it was hashed (the bytes read for the upload "
                               "have another SHA-256): nothing was stored", outcome="superseded")


def read_verified(handle: BinaryIO, size: int, sha256: bytes) -> bytes:
    """The whole file from an open handle, if it still hashes to `sha256`."""
    verifier = Verifier(sha256)
    data = b"".join(verifier.update(block) for block in blocks(handle, size))
    verifier.check()
    return data


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


class FileStore:
    """Objects as files under a root folder (the embedded default)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = Path(os.path.normpath(self.root / key))
        if not path.is_relative_to(self.root):
            raise PermanentError(f"object key escapes the store: {key!r}")
        return path

    def url(self, key: str) -> str:
        return self._path(key).as_uri()

    def full_key(self, key: str) -> str:
        return key

    async def put_stream(self, key: str, handle: BinaryIO, size: int,
                         sha256: bytes) -> PutResult:
        return await asyncio.to_thread(self._write, key, blocks(handle, size), sha256)

    async def put_bytes(self, key: str, data: bytes, sha256: bytes | None = None) -> PutResult:
        return await asyncio.to_thread(self._write, key, [data], sha256)

    def _write(self, key: str, parts: Iterable[bytes], sha256: bytes | None) -> PutResult:
        """Write to a temp file beside the target, fsync, check the digest of what was written,
        then rename: never a partial object, never one whose bytes its key does not name."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        verifier = Verifier(sha256 or b"")
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".put-")
        try:
            with os.fdopen(fd, "wb") as out:
                for block in parts:
                    out.write(verifier.update(block))
                out.flush()
                os.fsync(out.fileno())
            if sha256 is not None:
                verifier.check()
            Path(tmp).replace(target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return PutResult(self.url(key), verifier.sha.hexdigest())

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self._path(key).read_bytes)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, True)

    async def list_keys(self, prefix: str = "") -> list[str]:
        return await asyncio.to_thread(self._list, prefix)

    def _list(self, prefix: str) -> list[str]:
        if not self.root.exists():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return sorted(k for k in keys
                      if k.startswith(prefix) and not PurePosixPath(k).name.startswith(".put-"))

    async def list_entries(self, prefix: str = "") -> list[ObjectEntry]:
        """Every object under `prefix` with its mtime and size (temp files of puts left out)."""
        return await asyncio.to_thread(self._entries, prefix)

    def _entries(self, prefix: str) -> list[ObjectEntry]:
        entries = []
        for key in self._list(prefix):
            try:
                stat = self._path(key).stat()
            except FileNotFoundError:  # deleted since it was listed
                continue
            entries.append(ObjectEntry(key, datetime.fromtimestamp(stat.st_mtime, UTC),
                                       stat.st_size))
        return entries


class S3Store:
    """Objects in a bucket under a prefix, through one aioboto3 client."""

    def __init__(self, client: Any, settings: StorageSettings,
                 direct: DirectPut | None = None) -> None:
        self.client = client
        self.direct = direct  # small objects go this way when set
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.full_key(key)}"

    def _extra(self, key: str) -> dict[str, str]:
        extra = {"ContentType": content_type(key)}
        if self.settings.sse != "none":
            extra["ServerSideEncryption"] = self.settings.sse
        if self.settings.sse == "aws:kms" and self.settings.kms_key_id:
            extra["SSEKMSKeyId"] = self.settings.kms_key_id
        return extra

    async def put_stream(self, key: str, handle: BinaryIO, size: int,
                         sha256: bytes) -> PutResult:
        """Upload an open file's first `size` bytes, which must hash to `sha256`: in one PUT,
        or in parts when large; the server checks each PUT's and each part's checksum."""
        if size >= self.settings.multipart_threshold:
            return await self._put_multipart(key, handle, size, sha256)
        data = await asyncio.to_thread(read_verified, handle, size, sha256)
        return await self.put_bytes(key, data, sha256)

    async def put_bytes(self, key: str, data: bytes, sha256: bytes | None = None) -> PutResult:
        """One PUT carrying the SHA-256 of `data` (given, or computed here), which the server
        verifies before it stores anything."""
        sha256 = sha256 or hashlib.sha256(data).digest()
        if self.direct is not None:
            headers = {_HEADERS[name]: value for name, value in self._extra(key).items()}
            sent = await self.direct.put(self.bucket, self.full_key(key), data, headers, sha256)
            return PutResult(self.url(key), sent.get("etag", "").strip('"') or None,
                             sent.get("x-amz-server-side-encryption"))
        response = await self.client.put_object(Bucket=self.bucket, Key=self.full_key(key),
                                                Body=data, ChecksumSHA256=b64(sha256),
                                                **self._extra(key))
        return self._result(key, response)

    async def _put_multipart(self, key: str, handle: BinaryIO, size: int,
                             sha256: bytes) -> PutResult:
        """Parts carry their own SHA-256; the whole stream's is compared with `sha256` before
        the upload is completed, else it is aborted and nothing appears under `key`."""
        target = {"Bucket": self.bucket, "Key": self.full_key(key)}
        created = await self.client.create_multipart_upload(
            **target, ChecksumAlgorithm="SHA256", **self._extra(key))
        target["UploadId"] = created["UploadId"]
        try:
            parts = await self._send_parts(target, handle, size, sha256)
            response = await self.client.complete_multipart_upload(
                **target, MultipartUpload={"Parts": parts})
        except BaseException:
            await self._abort(target)
            raise
        return self._result(key, response)

    async def _send_parts(self, target: dict[str, str], handle: BinaryIO, size: int,
                          sha256: bytes) -> list[dict[str, Any]]:
        """Read parts in order (hashing the whole stream) while the previous one is sent:
        at most two parts in flight, so memory stays near three parts."""
        whole, tasks = Verifier(sha256), []
        step = part_bytes(size)
        try:
            for number, offset in enumerate(range(0, size, step), start=1):
                end = min(offset + step, size)
                part = await asyncio.to_thread(_read_part, handle, offset, end, whole)
                tasks.append(asyncio.create_task(self._send_part(target, number, *part)))
                if len(tasks) > 1:
                    await tasks[-2]
            parts = [await task for task in tasks]
        finally:
            for task in tasks:
                task.cancel()
        whole.check()
        return parts

    async def _send_part(self, target: dict[str, str], number: int, block: bytes,
                         checksum: str) -> dict[str, Any]:
        response = await self.client.upload_part(**target, PartNumber=number, Body=block,
                                                 ChecksumSHA256=checksum)
        liveness.moved()
        return {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum}

    async def _abort(self, target: dict[str, str]) -> None:
        """Best effort: a server that is away keeps the incomplete upload (invisible, and
        removed by a bucket lifecycle rule for incomplete uploads)."""
        try:
            await asyncio.wait_for(self.client.abort_multipart_upload(**target), ABORT_WAIT_S)
        except Exception as exc:
            log.warning("multipart_not_aborted", key=target["Key"], error=str(exc))

    def _result(self, key: str, response: dict[str, Any]) -> PutResult:
        etag = str(response.get("ETag", "")).strip('"') or None
        return PutResult(self.url(key), etag, response.get("ServerSideEncryption"))

    async def get(self, key: str) -> bytes:
        response = await self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))
        async with response["Body"] as body:
            return bytes(await body.read())

    async def delete(self, key: str) -> None:
        await self.client.delete_object(Bucket=self.bucket, Key=self.full_key(key))

    async def list_keys(self, prefix: str = "") -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        keys: list[str] = []
        strip = len(self.full_key(""))
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.full_key(prefix)):
            keys.extend(item["Key"][strip:] for item in page.get("Contents", []))
        return keys

    async def list_entries(self, prefix: str = "") -> list[ObjectEntry]:
        """Every object under `prefix` with its `LastModified` and size, a page at a time."""
        paginator = self.client.get_paginator("list_objects_v2")
        entries: list[ObjectEntry] = []
        strip = len(self.full_key(""))
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.full_key(prefix)):
            entries.extend(ObjectEntry(item["Key"][strip:], item["LastModified"],
                                       int(item.get("Size", 0)))
                           for item in page.get("Contents", []))
        return entries


async def preload_sdk(settings: StorageSettings) -> None:
    """Import the S3 SDK (~0.4 s of CPU) in a thread, so it overlaps Postgres opening."""
    if settings.is_s3:
        await asyncio.to_thread(importlib.import_module, "aioboto3")


async def open_store(settings: StorageSettings, stack: AsyncExitStack) -> ObjectStore:
    """The configured store; an S3 client lives as long as `stack`."""
    if not settings.is_s3:
        return FileStore(Path(settings.url))
    import aioboto3
    from aiobotocore.config import AioConfig

    config = AioConfig(max_pool_connections=settings.max_connections,
                       connect_timeout=settings.connect_timeout_s,
                       read_timeout=settings.read_timeout_s,
                       retries={"total_max_attempts": 1, "mode": "standard"})
    session = aioboto3.Session(region_name=settings.region)
    client = await stack.enter_async_context(
        session.client("s3", endpoint_url=settings.endpoint_url, config=config))
    return S3Store(client, settings, await _direct_put(settings, session, stack))


async def _direct_put(settings: StorageSettings, session: Any,
                      stack: AsyncExitStack) -> DirectPut | None:
    """The SDK-free PUT path, for an explicit endpoint with credentials (else the SDK's own
    error about missing credentials is the one users see)."""
    credentials = await session.get_credentials()
    if not (settings.direct_put and settings.endpoint_url and credentials):
        return None
    import aiohttp

    from daemon.s3put import DirectPut

    # each read is bounded, never the whole request: a total would count the wait for one of
    # `max_connections` pooled connections, which a busy daemon spends queueing, not stuck
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout_s,
                                    sock_read=settings.read_timeout_s)
    http = await stack.enter_async_context(aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=settings.max_connections), timeout=timeout))
    return DirectPut(http, credentials, settings.endpoint_url, settings.region)
