"""A small OpenAI-compatible `/v1/embeddings` server for tests (what vLLM or TEI answer),
computing its vectors with the hashing embedder, with failures to order."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from daemon.embedders.hashing import HashingEmbedder


@dataclass
class Script:
    """What the server does: `failures` statuses to answer first, the key it wants."""

    failures: list[int] = field(default_factory=list)
    key: str | None = None
    dim: int = 384
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


def _handler(script: Script) -> type[BaseHTTPRequestHandler]:
    embedder = HashingEmbedder(script.dim)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            script.requests.append(body)
            script.headers.append(dict(self.headers))
            if script.key and self.headers.get("Authorization") != f"Bearer {script.key}":
                return self._send(401, {"error": "bad key"})
            if script.failures:
                return self._send(script.failures.pop(0), {"error": "busy"}, {"Retry-After": "0"})
            vectors = embedder.embed(body["input"]) * 3.0  # not unit length: we normalise
            data = [{"index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
            random.shuffle(data)  # order by "index", as the API says
            return self._send(200, {"data": data, "model": body["model"]})

        def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            raw = json.dumps(payload).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def embedding_server(script: Script) -> Iterator[str]:
    """Serve on a free port; yields the API base URL (…/v1)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
