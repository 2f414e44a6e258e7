"""The program's world, built by the sandboxed process itself just after the zygote forked it as PID 1
of a fresh PID namespace (with fresh IPC and UTS namespaces, in the zygote's empty network namespace):

- a private mount namespace whose root is an empty tmpfs holding read-only binds of only what the
  interpreter needs (the system's /usr and /lib*, the interpreter's prefixes and site-packages), a few
  device nodes, a minimal /etc, its own /proc; nothing of $HOME, the project or host sockets;
- one size-limited scratch tmpfs, private to this program, for /sandbox (cwd and HOME), /tmp and /dev/shm;
- then no capability, an unprivileged user id (also when the harness is root: a per-worker uid, so
  the kernel's process limit applies and counts this program alone), no new privileges, and
  resource limits on address space, CPU, file size, open files and processes.

Standard library only (it runs inside the zygote)."""

from __future__ import annotations

import os
import resource
import signal
import sys
from dataclasses import dataclass

from . import kernel

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/mime.types")
DEVICES = ("null", "zero", "full", "random", "urandom")
WORKDIR = "/sandbox"
USER_MODE_UID = 1000  # the program's uid inside its own user namespace (user mode)


@dataclass
class Plan:
    """What the zygote decided once for all its programs."""
    mode: str  # "root": the harness is root, programs run as `uid`; "user": inside user namespaces; "unsafe": none
    root: str  # an empty host directory the new root is mounted on (in the private mount namespace only)
    binds: list[str]  # host directories bound read-only at the same path
    uid: int  # the program's uid in root mode
    address_space: int  # the zygote's address space in bytes (the program's limit is this plus its memory)
    nproc_base: int  # processes already counted against the program's limit (old kernels, user mode)


def interpreter_paths() -> list[str]:
    """The directories an interpreter like this one reads: its prefixes and every sys.path entry
    below them (site-packages), minus those inside another (the system dirs are bound anyway)."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix)}
    prefixes.add(os.path.realpath(os.path.dirname(sys.executable)))
    paths = set(prefixes)
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if real and os.path.isdir(real) and any(real == p or real.startswith(p + "/") for p in prefixes):
            paths.add(real)
    found = sorted(p for p in paths if os.path.isdir(p) and p != "/")
    covered = [d for d in SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    kept: list[str] = []
    for p in found:
        if not any(p == q or p.startswith(q + "/") for q in covered + kept):
            kept.append(p)
    return kept


def _mkdirs(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))


def build(plan: Plan, disk_bytes: int) -> list[str]:
    """Enter a private mount namespace and pivot into the program's root. Returns notes on what
    could not be provided (e.g. no /proc where the kernel refuses it)."""
    notes = []
    root = plan.root
    kernel.unshare(kernel.CLONE_NEWNS)
    kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)  # nothing propagates back to the host
    kernel.mount("codegen-root", root, "tmpfs", kernel.MS_NOSUID | kernel.MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            os.symlink(os.readlink(path), root + path)
        elif os.path.isdir(path):
            _mkdirs(root + path)
            kernel.bind(path, root + path)
    for path in plan.binds:
        _mkdirs(root + path)
        kernel.bind(path, root + path)

    _mkdirs(root + "/dev")
    kernel.mount("codegen-dev", root + "/dev", "tmpfs", kernel.MS_NOSUID | kernel.MS_NOEXEC, "size=64k,nr_inodes=64,mode=0755")
    for name in DEVICES:
        if os.path.exists("/dev/" + name):
            _touch(f"{root}/dev/{name}")
            kernel.bind("/dev/" + name, f"{root}/dev/{name}", writable=True, devices=True)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")
    _mkdirs(root + "/dev/shm")

    # One scratch file system, size-limited, for everything the program may write.
    _mkdirs(root + WORKDIR)
    owner = f",uid={plan.uid},gid={plan.uid}" if plan.mode == "root" else ""
    kernel.mount("codegen-scratch", root + WORKDIR, "tmpfs", kernel.MS_NOSUID | kernel.MS_NODEV,
                 f"size={max(disk_bytes, 65536)},nr_inodes=16384,mode=0700{owner}")
    for sub, target in ((".tmp", "/tmp"), (".shm", "/dev/shm")):
        os.mkdir(root + WORKDIR + "/" + sub)
        os.chmod(root + WORKDIR + "/" + sub, 0o1777)
        _mkdirs(root + target)
        kernel.bind(root + WORKDIR + "/" + sub, root + target, writable=True)

    _mkdirs(root + "/etc")
    uid = plan.uid if plan.mode == "root" else USER_MODE_UID
    with open(root + "/etc/passwd", "w") as fh:
        fh.write(f"root:x:0:0:root:/:/bin/false\nsandbox:x:{uid}:{uid}:sandbox:{WORKDIR}:/bin/false\n")
    with open(root + "/etc/group", "w") as fh:
        fh.write(f"root:x:0:\nsandbox:x:{uid}:\n")
    with open(root + "/etc/hostname", "w") as fh:
        fh.write("sandbox\n")
    for path in ETC_FILES:
        if os.path.isfile(path):
            _touch(root + path)
            kernel.bind(path, root + path)

    _mkdirs(root + "/proc")
    try:
        kernel.mount("proc", root + "/proc", "proc", kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC)
    except OSError as e:  # e.g. a container that masks parts of the host's /proc
        notes.append(f"no /proc ({e.strerror})")
    kernel.mount(None, root + "/dev", None, kernel.MS_REMOUNT | kernel.MS_BIND | kernel.MS_RDONLY | kernel.MS_NOSUID
                 | kernel.MS_NOEXEC)
    kernel.pivot_root(root)
    kernel.mount(None, "/", None, kernel.MS_REMOUNT | kernel.MS_BIND | kernel.MS_RDONLY | kernel.MS_NOSUID | kernel.MS_NODEV)
    try:
        kernel.sethostname("sandbox")
    except OSError:
        pass
    os.chdir(WORKDIR)
    return notes


def drop_privileges(plan: Plan, host_proc: int | None) -> None:
    """Become an unprivileged user with no capability and no way to gain one. `host_proc` is a
    directory fd of a /proc that shows this process (the user mode writes its id maps there)."""
    if plan.mode == "unsafe":
        return
    kernel.prctl(kernel.PR_SET_NO_NEW_PRIVS, 1)
    if plan.mode == "root":
        kernel.drop_bounding_set()
        os.setgroups([])
        os.setresgid(plan.uid, plan.uid, plan.uid)
        os.setresuid(plan.uid, plan.uid, plan.uid)  # leaving uid 0 clears every capability
    else:
        # A nested user namespace whose only id maps to ours: no capability over the namespaces
        # (mounts, network) made in the zygote's, and a process count of its own.
        kernel.unshare(kernel.CLONE_NEWUSER)
        for name, text in (("setgroups", "deny"), ("uid_map", f"{USER_MODE_UID} 0 1"), ("gid_map", f"{USER_MODE_UID} 0 1")):
            fd = os.open(f"self/{name}", os.O_WRONLY, dir_fd=host_proc)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        kernel.drop_bounding_set()
    kernel.clear_capabilities()
    if kernel.capabilities_effective() != 0:
        raise OSError("capabilities remain after dropping them")
    kernel.prctl(kernel.PR_SET_PDEATHSIG, signal.SIGKILL)  # a credential change cleared it


def apply_limits(plan: Plan, limits: dict) -> None:
    """Per-process limits (never above a hard limit already set); the total across the program's
    processes is the supervisor's watch."""
    memory = plan.address_space + int(limits["memory_mb"]) * 1024 * 1024
    cpu = int(limits["timeout"]) + 1
    wanted = {resource.RLIMIT_AS: (memory, memory), resource.RLIMIT_CPU: (cpu, cpu + 1),
              resource.RLIMIT_FSIZE: (int(limits["max_file_bytes"]),) * 2,
              resource.RLIMIT_NOFILE: (int(limits["open_files"]),) * 2, resource.RLIMIT_CORE: (0, 0),
              resource.RLIMIT_NPROC: (plan.nproc_base + int(limits["max_processes"]),) * 2,
              resource.RLIMIT_MEMLOCK: (0, 0)}
    for res, (soft, hard) in wanted.items():
        _, old_hard = resource.getrlimit(res)
        if old_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, old_hard), min(hard, old_hard)
        try:
            resource.setrlimit(res, (soft, hard))
        except (ValueError, OSError):
            if plan.mode != "unsafe":  # some systems (macOS) refuse some limits: only the unsafe mode runs there
                raise
