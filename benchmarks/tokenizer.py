"""Tokenizer throughput on this machine's Python standard library: ours vs transformers, one run.

    python benchmarks/tokenizer.py [--tokenizer DIR] [--limit N] [--hf4-python PATH]

Rows: encode one text per call, encode the whole corpus as one batch, decode. Columns: seconds,
MB/s, tokens/s, and the ratio against transformers' tokenizer on the same row. transformers 5 has
only the `tokenizers`-backed class; transformers 4.x's pure-Python `CodeGenTokenizer` is measured in
a child process of the interpreter given by --hf4-python (e.g. a venv with transformers==4.57.6),
on the same corpus, in the same run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sysconfig
import time
import tokenize

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TOKENIZER = os.path.join(HERE, "..", "..", "shared", "data", "codegen-tokenizer")


def corpus(limit: int | None) -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    texts = []
    for f in sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True)):
        if "site-packages" in f:
            continue
        try:
            with tokenize.open(f) as fh:
                texts.append(fh.read())
        except (SyntaxError, UnicodeDecodeError, LookupError):
            continue
    return texts[:limit] if limit else texts


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


HF4_CHILD = r"""
import json, sys, time, glob, os, sysconfig, tokenize
sys.path.insert(0, sys.argv[3])
from tokenizer import corpus
from transformers import CodeGenTokenizer
tok = CodeGenTokenizer.from_pretrained(sys.argv[1])
texts = corpus(int(sys.argv[2]) or None)
t = time.perf_counter()
ids = [tok(x)["input_ids"] for x in texts]
enc = time.perf_counter() - t
t = time.perf_counter()
for x in ids:
    tok.decode(x)
dec = time.perf_counter() - t
print(json.dumps({"encode": enc, "decode": dec, "tokens": sum(map(len, ids))}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N files")
    ap.add_argument("--hf4-python", help="python with transformers 4.x installed, for its slow tokenizer")
    ap.add_argument("--repeat", type=int, default=2, help="best of N for the fast rows")
    args = ap.parse_args()

    import transformers

    from codegen import CodeGenTokenizer, CodeGenTokenizerFast

    texts = corpus(args.limit or None)
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    hf = transformers.AutoTokenizer.from_pretrained(args.tokenizer)
    fast = CodeGenTokenizerFast.from_pretrained(args.tokenizer)
    slow = CodeGenTokenizer.from_pretrained(args.tokenizer)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus; python {platform.python_version()}; "
          f"transformers {transformers.__version__} ({type(hf).__name__})")
    print(f"corpus: {len(texts)} stdlib .py files, {mb:.1f} MB")

    rows = []
    t_hf, ref = timed(lambda: [hf(x)["input_ids"] for x in texts], args.repeat)
    n_tok = sum(map(len, ref))
    rows.append(("encode, one text per call", "transformers", t_hf, t_hf))
    t, got = timed(lambda: [fast(x)["input_ids"] for x in texts], args.repeat)
    assert got == ref, "fast ids differ from transformers"
    rows.append(("encode, one text per call", "ours fast", t, t_hf))
    t_hfb, _ = timed(lambda: hf(texts)["input_ids"], args.repeat)
    rows.append(("encode, one batch", "transformers", t_hfb, t_hfb))
    t, got = timed(lambda: fast(texts)["input_ids"], args.repeat)
    assert got == ref
    rows.append(("encode, one batch", "ours fast", t, t_hfb))
    t_hfd, _ = timed(lambda: [hf.decode(x) for x in ref], args.repeat)
    rows.append(("decode", "transformers", t_hfd, t_hfd))
    t, dec = timed(lambda: [fast.decode(x) for x in ref], args.repeat)
    assert dec == texts
    rows.append(("decode", "ours (both classes)", t, t_hfd))

    t_slow, got = timed(lambda: [slow(x)["input_ids"] for x in texts])
    assert got == ref
    if args.hf4_python:
        r = subprocess.run([args.hf4_python, "-c", HF4_CHILD, args.tokenizer, str(args.limit), HERE],
                           capture_output=True, text=True)
        if r.returncode:
            print("transformers 4.x slow tokenizer failed:", r.stderr.strip().splitlines()[-1])
        else:
            hf4 = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(("slow encode, one text per call", "transformers 4.x slow", hf4["encode"], hf4["encode"]))
            rows.append(("slow encode, one text per call", "ours slow", t_slow, hf4["encode"]))
            rows.append(("slow decode", "transformers 4.x slow", hf4["decode"], hf4["decode"]))
    else:
        rows.append(("slow encode, one text per call", "ours slow", t_slow, float("nan")))

    print(f"\n{'case':<32}{'tokenizer':<24}{'seconds':>9}{'MB/s':>8}{'Mtok/s':>8}{'speed-up':>10}")
    for case, who, sec, base in rows:
        print(f"{case:<32}{who:<24}{sec:>9.2f}{mb / sec:>8.2f}{n_tok / sec / 1e6:>8.2f}{base / sec:>9.2f}x")


if __name__ == "__main__":
    main()
