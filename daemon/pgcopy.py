"""Binary COPY of embedding rows, encoded here with struct and numpy.

asyncpg has no fast path for `real[]` (about 170 µs a 384-d row, and it refuses custom codecs
for array types); encoding the COPY stream ourselves costs a few µs a row, for `vector(dim)`
and `real[]` alike. Format: PostgreSQL's binary COPY (a header, then per row a field count and
length-prefixed fields, then a trailer).
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any

import numpy as np

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
FLOAT4_OID = 700
_ELEMENTS = np.dtype([("length", ">i4"), ("value", ">f4")])
_FLUSH_BYTES = 1 << 18


def _text(value: str) -> bytes:
    data = value.encode("utf-8")
    return struct.pack(">i", len(data)) + data


def _vector(values: Any, native: bool) -> bytes:
    """pgvector's `vector` (dim, unused, floats) or a one-dimensional `real[]`."""
    floats = np.asarray(values, dtype=">f4")
    if native:
        payload = struct.pack(">hh", len(floats), 0) + floats.tobytes()
    else:
        elements = np.empty(len(floats), dtype=_ELEMENTS)
        elements["length"], elements["value"] = 4, floats
        payload = struct.pack(">iiiii", 1, 0, FLOAT4_OID, len(floats), 1) + elements.tobytes()
    return struct.pack(">i", len(payload)) + payload


def encode_row(row: tuple[Any, ...], native: bool) -> bytes:
    """(document_id, chunk_index, s3_key, doc_type, content, char_start, embedding, model)."""
    doc_id, index, key, doc_type, content, start, vector, model = row
    return b"".join((struct.pack(">hiqii", 8, 8, doc_id, 4, index), _text(key), _text(doc_type),
                     _text(content), struct.pack(">iq", 8, start), _vector(vector, native),
                     _text(model)))


async def _rows(rows: Iterable[tuple[Any, ...]] | AsyncIterable[tuple[Any, ...]]
                ) -> AsyncIterator[tuple[Any, ...]]:
    if isinstance(rows, AsyncIterable):
        async for row in rows:
            yield row
    else:
        for row in rows:
            yield row


def _no_turns(server: bool) -> None:
    return None


async def stream(rows: Iterable[tuple[Any, ...]] | AsyncIterable[tuple[Any, ...]],
                 native: bool, counted: list[int],
                 turn: Callable[[bool], None] = _no_turns) -> AsyncIterator[bytes]:
    """The whole COPY stream in pieces of about 256 KiB; `counted[0]` ends as the row count.
    `turn(False)` while the rows are being made (our side), `turn(True)` while a piece is
    with the server, until the next one is asked for."""
    buffer = [HEADER]
    size = len(HEADER)
    turn(False)
    async for row in _rows(rows):
        encoded = encode_row(row, native)
        buffer.append(encoded)
        size += len(encoded)
        counted[0] += 1
        if size >= _FLUSH_BYTES:
            turn(True)
            yield b"".join(buffer)
            turn(False)
            buffer, size = [], 0
    buffer.append(TRAILER)
    turn(True)
    yield b"".join(buffer)
