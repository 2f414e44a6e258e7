"""Greedy completions of 20 function signatures by the bundled demo model: how many parse with `ast`.

    python scripts/demo_check.py [--model DIR] [--max-new-tokens 96] [--show]

A completion stops at the standard harnesses' stop sequences (a new top-level def/class/if/print
or comment) or after --max-new-tokens; it counts as parsing when prompt + completion is valid Python.
"""

from __future__ import annotations

import argparse
import ast
import json

PROMPTS = [
    "def fibonacci(n):\n",
    "def is_prime(n):\n",
    "def factorial(n):\n",
    "def reverse_string(s):\n",
    "def read_lines(path):\n",
    "def count_words(text):\n",
    "def flatten(items):\n",
    "def merge_dicts(a, b):\n",
    "def gcd(a, b):\n",
    "def is_palindrome(s):\n",
    "def unique(seq):\n",
    "def chunks(lst, n):\n",
    "def clamp(value, low, high):\n",
    "def mean(values):\n",
    "def parse_int(text, default=0):\n",
    "def write_json(path, data):\n",
    "class Stack:\n    def __init__(self):\n",
    "def binary_search(items, target):\n",
    "def to_snake_case(name):\n",
    "def get_extension(filename):\n",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", help="checkpoint directory (default: the bundled demo model)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--repetition-penalty", type=float, default=1.0, help="transformers' repetition penalty (default off)")
    ap.add_argument("--show", action="store_true", help="print every completion")
    args = ap.parse_args()

    import codegen
    from codegen.demo import demo_path

    path = args.model or demo_path()
    model = codegen.CodeGenForCausalLM.from_pretrained(path)
    tok = codegen.CodeGenTokenizerFast.from_pretrained(path)
    opts = codegen.CompletionOptions(temperature=0, max_new_tokens=args.max_new_tokens, repetition_penalty=args.repetition_penalty,
                                     stop=("\nclass", "\ndef", "\n#", "\nif", "\nprint", "\n\n\n"))
    parsed = 0
    for prompt, c in zip(PROMPTS, codegen.complete(model, tok, PROMPTS, opts)):
        try:
            ast.parse(prompt + c.text)
            ok = True
        except SyntaxError:
            ok = False
        parsed += ok
        if args.show:
            print(f"--- {'parses' if ok else 'does not parse'} ({c.finish_reason})\n{prompt}{c.text}")
    print(json.dumps({"prompts": len(PROMPTS), "parse": parsed, "max_new_tokens": args.max_new_tokens,
                      "repetition_penalty": args.repetition_penalty}))


if __name__ == "__main__":
    main()
