"""Frames between the harness and its zygotes: a 4-byte big-endian length, then JSON. On raw pipe
fds, with an optional deadline. Standard library only."""

from __future__ import annotations

import json
import os
import select
import time

MAX_FRAME = 64 * 1024 * 1024


class Closed(EOFError):
    """The other end closed its pipe (the process ended)."""


def write_frame(fd: int, obj) -> None:
    data = json.dumps(obj).encode()
    data = len(data).to_bytes(4, "big") + data
    while data:
        data = data[os.write(fd, data):]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError("no answer in time")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise Closed("pipe closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, deadline: float | None = None):
    size = int.from_bytes(_read_exact(fd, 4, deadline), "big")
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes exceeds {MAX_FRAME}")
    return json.loads(_read_exact(fd, size, deadline))
