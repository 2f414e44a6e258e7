"""A real uvicorn server on a loopback port around a ContinuousBatcher, for the server tests."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from codegen.engine.batcher import ContinuousBatcher
from codegen.engine.prefix import PrefixCache
from codegen.server.app import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model, tok, **kwargs) -> None:
        cache_mb = kwargs.pop("prefix_cache_mb", 256)  # on, as `codegen serve` has it by default
        self.batcher = ContinuousBatcher(model, tok, max_batch=kwargs.pop("max_batch", 16), max_queue=kwargs.pop("max_queue", 64),
                                         prefix_cache=PrefixCache(cache_mb << 20) if cache_mb else None)
        app = create_app(self.batcher, "codegen-test", **kwargs)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.batcher.start()
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.batcher.close()
