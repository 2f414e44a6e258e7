"""Scratch directories of the benchmarks (random checkpoints, converted CTranslate2 models: up to
several GB each), removed when the benchmark ends: normally, on an exception, on Ctrl-C and on
SIGTERM (what `timeout` sends). A killed-by-SIGKILL run still leaves its directories; their prefix
`codegen-bench-` says whose they are.

    from scratch import scratch_dir
    path = scratch_dir("ct2")          # /tmp/codegen-bench-ct2-XXXX, gone at exit
"""

from __future__ import annotations

import atexit
import shutil
import signal
import tempfile

PREFIX = "codegen-bench-"
_dirs: list[str] = []
_registered = False


def _remove_all() -> None:
    while _dirs:
        shutil.rmtree(_dirs.pop(), ignore_errors=True)


def _on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through finally blocks and atexit, unlike the default action


def scratch_dir(tag: str) -> str:
    """A new empty directory under the temp dir, removed with its contents when this process exits."""
    global _registered
    if not _registered:
        _registered = True
        atexit.register(_remove_all)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{tag}-")
    _dirs.append(path)
    return path


def remove(path: str) -> None:
    """Remove a scratch directory before exit (the next case needs the disk)."""
    if path in _dirs:
        _dirs.remove(path)
    shutil.rmtree(path, ignore_errors=True)


__all__ = ["scratch_dir", "remove", "PREFIX"]
