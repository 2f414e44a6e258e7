"""The benchmarks' scratch directories (GBs of checkpoints each) are removed however the benchmark
ends: at a normal exit, on an exception, and on SIGTERM (what `timeout` sends). Leftovers of killed
runs once filled the CI machine's disk."""

import os
import signal
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

CHILD = """
import sys, time
sys.path.insert(0, sys.argv[1])
from scratch import remove, scratch_dir
early, kept = scratch_dir("test"), scratch_dir("test")
open(kept + "/weights.bin", "wb").write(b"x" * 4096)
remove(early)
print(early, kept, flush=True)
how = sys.argv[2]
if how == "raise":
    raise RuntimeError("a failing benchmark")
if how == "wait":
    time.sleep(60)
"""


def _run(how: str) -> tuple[list[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(BENCHMARKS), how], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    paths = proc.stdout.readline().split()
    if how == "wait":
        proc.send_signal(signal.SIGTERM)
    return paths, proc.wait(timeout=30)


def test_scratch_dirs_are_removed_at_exit_on_error_and_on_sigterm():
    for how, rc in (("exit", 0), ("raise", 1), ("wait", 128 + signal.SIGTERM)):
        paths, code = _run(how)
        assert len(paths) == 2 and all(os.path.basename(p).startswith("codegen-bench-test-") for p in paths), paths
        assert code == rc, (how, code)
        assert not any(os.path.exists(p) for p in paths), (how, paths)
