"""Build CodeGen's tokenizer files from data the project may redistribute.

GPT-2's BPE table ships in the openai-whisper sdist (MIT) as `whisper/assets/gpt2.tiktoken`
(base64 token, rank per line). This script turns it into transformers-format files — vocab.json
(byte-level strings -> ids), merges.txt (each multi-byte token's merge, recovered by running BPE on
its bytes with the lower ranks), <|endoftext|> = 50256 — and adds CodeGen's 38 whitespace tokens
(31..2 spaces = 50257..50286, 9..2 tabs = 50287..50294; reference section 3.1).

    python scripts/make_tokenizer.py --out src/codegen/demo              # downloads the sdist with pip
    python scripts/make_tokenizer.py --tiktoken gpt2.tiktoken --out DIR   # from a local copy
"""

from __future__ import annotations

import argparse
import base64
import glob
import os
import subprocess
import sys
import tarfile
import tempfile

WHISPER_SDIST = "openai-whisper==20250625"


def fetch_tiktoken_file(workdir: str) -> str:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", WHISPER_SDIST,
                    "-d", workdir], check=True, stdout=subprocess.DEVNULL)
    [sdist] = glob.glob(os.path.join(workdir, "openai_whisper-*.tar.gz")) or glob.glob(os.path.join(workdir, "openai-whisper-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("whisper/assets/gpt2.tiktoken"))
        path = os.path.join(workdir, "gpt2.tiktoken")
        with tar.extractfile(member) as src, open(path, "wb") as dst:
            dst.write(src.read())
    return path


def read_ranks(path: str) -> dict[bytes, int]:
    ranks = {}
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not 0..{len(ranks) - 1}")
    return ranks


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """For each multi-byte token in rank order, the two parts BPE joins last when it builds it."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best, best_rank = None, None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best is None:
                raise ValueError(f"token {token!r} (rank {rank}) cannot be built from lower-ranked tokens")
            parts = parts[:best] + [parts[best] + parts[best + 1]] + parts[best + 2:]
        merges.append((parts[0], parts[1]))
    return merges


def write_files(ranks: dict[bytes, int], out: str) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    from codegen.tokenizer import CodeGenTokenizer
    from codegen.tokenizer.files import bytes_to_unicode

    table = bytes_to_unicode()
    text = lambda b: "".join(table[x] for x in b)  # noqa: E731
    vocab = {text(b): r for b, r in ranks.items()}
    vocab["<|endoftext|>"] = len(ranks)
    merges = [(text(a), text(b)) for a, b in recover_merges(ranks)]
    added = {" " * n: 50257 + (31 - n) for n in range(31, 1, -1)}
    added.update({"\t" * n: 50287 + (9 - n) for n in range(9, 1, -1)})
    tok = CodeGenTokenizer(vocab=vocab, merges=merges, added_tokens=added, model_max_length=2048)
    tok.save_pretrained(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiktoken", help="a local gpt2.tiktoken instead of downloading the whisper sdist")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        path = args.tiktoken or fetch_tiktoken_file(work)
        ranks = read_ranks(path)
        write_files(ranks, args.out)
    print(f"wrote CodeGen tokenizer files ({len(ranks) + 1 + 38} tokens) to {args.out}")


if __name__ == "__main__":
    main()
