"""Hostile programs for the sandbox and a runner that scores them in whatever isolation mode its
harness gets. Standard library only: test_sandbox runs it in-process (root mode when the tests run
as root) and as a script under an unprivileged uid (user mode), with the sandbox package loaded by
path. `run(sandbox, ctx)` returns one record per case: name, ok, and the verdict; the host-side
checks (nothing written, nothing received) are the caller's."""

from __future__ import annotations

import json
import os
import sys
import time


def _cases(ctx: dict) -> list[tuple[str, str, dict, str]]:
    """(name, program, limits, expectation): expectation "not passed", "passed", "memory" or "timed out"."""
    targets, secrets = ctx["targets"], ctx["secret_files"]
    write_all = (f"import posix\nfor p in {targets!r}:\n    try:\n        fd = posix.open(p, posix.O_WRONLY | posix.O_CREAT, 0o666)\n"
                 f"        posix.write(fd, b'pwned')\n        posix.close(fd)\n    except OSError:\n        pass\n")
    leak = (f"import posix\nfound = []\nfor p in {secrets!r}:\n    try:\n        found.append(open(p).read())\n    except OSError as e:\n"
            f"        pass\nfor d in {[os.path.dirname(p) for p in secrets]!r}:\n    try:\n        found.extend(posix.listdir(d))\n"
            f"    except OSError:\n        pass\nraise Exception('leaked: ' + repr(found))\n")
    sockets = (f"import socket\nfor family, kind, addr in [(socket.AF_UNIX, socket.SOCK_STREAM, {ctx['unix_socket']!r}),\n"
               f"        (socket.AF_UNIX, socket.SOCK_STREAM, {ctx['abstract_socket']!r}),\n"
               f"        (socket.AF_INET, socket.SOCK_STREAM, ('127.0.0.1', {ctx['tcp_port']})),\n"
               f"        (socket.AF_INET6, socket.SOCK_STREAM, ('::1', {ctx['tcp6_port']})),\n"
               f"        (socket.AF_INET, socket.SOCK_DGRAM, ('127.0.0.1', {ctx['udp_port']}))]:\n"
               f"    try:\n        s = socket.socket(family, kind)\n        s.settimeout(1)\n        s.connect(addr)\n"
               f"        s.send(b'leak')\n        s.sendto(b'leak', addr) if kind == socket.SOCK_DGRAM else None\n"
               f"    except OSError:\n        pass\n")
    bomb = "import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        pass\n"
    children = ("import posix, time\nfor i in range(6):\n    if posix.fork() == 0:\n        x = bytearray(300 * 2**20)\n"
                "        time.sleep(10)\n        posix._exit(0)\ntime.sleep(10)\n")
    fill = ("total = 0\nfor d in ('/tmp', '/dev/shm', '.'):\n    for i in range(10**6):\n        try:\n"
            "            open(f'{d}/f{i}', 'wb').write(b'x' * 2**20)\n            total += 2**20\n        except OSError:\n"
            "            break\nassert total <= 16 * 2**20, total\n")
    daemon = ("import posix, time\nif posix.fork() == 0:\n    posix.setsid()\n    if posix.fork() == 0:\n        time.sleep(60)\n"
              "    posix._exit(0)\ntime.sleep(0.2)\n")
    signals = (f"import posix, signal\nfor pid in ({ctx['harness_pid']}, -1, 0, 1, 2):\n    try:\n"
               f"        posix.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\nassert False, 'still here'\n")
    planted = ("import posix\nfor name in ('.out', '.err', 'runner.py', 'program.py', 'verdict', '/tmp/.err'):\n"
               f"    posix.symlink({secrets[0]!r}, name)\nraise Exception('planted')\n")
    fast = dict(timeout=2.0)
    cases = [
        ("write outside its directory", write_all, fast, "any"),
        ("read the harness user's files", leak, fast, "not passed"),
        ("reach host sockets and the loopback network", sockets, fast, "any"),
        ("fork bomb", bomb, dict(timeout=2.0, max_processes=16), "not passed"),
        ("memory across children", children, dict(timeout=5.0, memory_mb=512), "memory"),
        ("fill /tmp, /dev/shm and its directory", fill, dict(timeout=10.0, disk_mb=16), "passed"),
        ("daemon", daemon, fast, "passed"),
        ("signal the harness", signals, fast, "not passed"),
        ("plant symlinks", planted, fast, "planted"),
    ]
    exits = ["import sys\nsys.exit(0)", "exit()", "quit()", "raise SystemExit", "raise SystemExit(0)", "import os\nos._exit(0)",
             "import posix\nposix._exit(0)", "raise KeyboardInterrupt",
             "import signal\nsignal.setitimer(signal.ITIMER_REAL, 0)\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass",
             "import posix\nfor fd in range(3, 1024):\n    try:\n        posix.write(fd, b'passed' * 100)\n    except OSError:\n"
             "        pass\nraise SystemExit(0)",
             "import posix\nposix.close(3)\nraise SystemExit(0)",
             "import posix, signal\nposix.kill(posix.getpid(), signal.SIGKILL)\nassert False, 'after the kill'",
             "import atexit, sys\natexit.register(lambda: print('passed'))\nsys.exit(0)",
             "import sys\nsys.stdout.write('passed')\nsys.stderr.write('passed')\nraise SystemExit(0)",
             "import threading, posix, time\nthreading.Thread(target=lambda: posix._exit(0)).start()\ntime.sleep(1)\nassert False",
             "import posix\nposix.dup2(1, 3)\nraise SystemExit(0)"]
    cases += [(f"exit trick {i}: {p.splitlines()[-1][:40]}", p, dict(timeout=2.0), "not passed") for i, p in enumerate(exits)]
    return cases


GOOD = "def add(a, b):\n    return a + b\n\nassert add(1, 2) == 3\nassert sorted({3, 1, 2}) == [1, 2, 3]\n"
TAMPER = ("import posix, signal, time\nfor _ in range(20):\n    for pid in posix.listdir('/proc'):\n        if pid.isdigit():\n"
          "            try:\n                posix.kill(int(pid), signal.SIGSTOP)\n            except OSError:\n                pass\n"
          "    for d in ('/tmp', '/dev/shm', '.'):\n        try:\n            open(d + '/x', 'w').write('tampered')\n"
          "        except OSError:\n            pass\n    time.sleep(0.05)\n")
OTHER = "import posix\nfor d in ('/tmp', '/dev/shm', '.'):\n    assert [n for n in posix.listdir(d) if not n.startswith('.')] == [], d\n" + GOOD


def _expected(expect: str, v) -> bool:
    if expect == "any":
        return True
    if expect == "passed":
        return v.passed
    if expect == "memory":
        return not v.passed and ("memory limit" in v.detail or "MemoryError" in v.detail)
    if expect == "planted":
        return v.status == "failed" and v.detail == "Exception: planted"
    return not v.passed


def run(sandbox, ctx: dict) -> list[dict]:
    records = []
    with sandbox.Sandbox(workers=2) as box:
        for name, program, limits, expect in _cases(ctx):
            v = box.run(program, sandbox.Limits(**limits))
            zygotes = [z.info["pid"] for z in box._all]
            left = [p for z in zygotes for p in sandbox.zygote._tree(z)[1:]]  # the supervisor's own walk
            alive = all(os.path.exists(f"/proc/{z}") for z in zygotes)
            after = box.run(GOOD, sandbox.Limits(timeout=3.0))
            records.append({"name": name, "ok": _expected(expect, v) and not left and alive and after.passed,
                            "verdict": v.__dict__, "left": left, "after": after.status, "mode": box.isolation})
        # one sample tampering with the others running beside it
        verdicts = box.run_many([TAMPER] + [OTHER] * 5, sandbox.Limits(timeout=5.0))
        records.append({"name": "tamper with other samples", "ok": all(v.passed for v in verdicts[1:]),
                        "verdict": [v.status + " " + v.detail for v in verdicts], "mode": box.isolation})
    return records


if __name__ == "__main__":  # python hostile.py CTX_JSON: the package is loaded by path (user mode)
    ctx = json.loads(sys.argv[1])
    sys.path.insert(0, ctx["package_parent"])
    module = __import__(ctx["package_name"])
    t = time.time()
    print(json.dumps(run(module, ctx)))
