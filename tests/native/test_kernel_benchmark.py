"""benchmarks/products.py runs every tier's products, the quantized ones included, and refuses bad --rows."""

import subprocess
import sys
from pathlib import Path

import pytest

from codegen.native import kernels

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "products.py"
pytestmark = pytest.mark.skipif(not kernels.load(), reason="native kernels unavailable on this machine")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_every_format_and_row_count_is_measured():
    out = run("--n", "72", "--k", "100", "--repeats", "1", "--rows", "1", "3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "tier " in lines[0] and "threads" in lines[0]
    names = [line.split()[0] + (" " + line.split()[1] if line.startswith("int") else "") for line in lines[2:]]
    assert names == ["float32", "bfloat16", "int8 x1", "int4 x1", "int8 x3", "int4 x3"]
    tiers = lines[1].split()[3:-1]  # dtype, torch, mv, <tiers>, (GB/s)
    for line in lines[4:]:
        assert line.split()[2] == "-" and len(line.split()) == 3 + len(tiers)  # torch has no integer product


def test_bad_rows_are_refused():
    out = run("--n", "8", "--k", "8", "--rows", "17")
    assert out.returncode == 2 and "--rows takes 1 to 16" in out.stderr
